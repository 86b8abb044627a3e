"""Results back to the PACS: the DICOM SR of each series and the durable queue delivering it."""
