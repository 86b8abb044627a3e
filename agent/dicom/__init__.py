"""The DICOM face of the agent: a thin pynetdicom layer over ``ftlct.agent.store``."""
