"""The series result as a DICOM Comprehensive SR (highdicom), for the hospital's PACS.

Content tree (TID 2000 "Basic Diagnostic Imaging Report" shape):

    CONTAINER  Diagnostic imaging report (LN 18748-4)
      CONTAINS CONTAINER Findings (DCM 121070)
        CONTAINS CODE   Finding (DCM 121071) = the label (coding scheme 99FTLCT)
          HAS PROPERTIES NUM  Probability of finding (99FTLCT PROB) = p, unit {ratio}
          INFERRED FROM IMAGE  Source of Measurement (DCM 121112) -> each key slice
        CONTAINS NUM  Probability of finding, one per label
          HAS PROPERTIES CODE  Finding = that label
        CONTAINS UIDREF  Series Instance UID (DCM 112002) = the source series
      CONTAINS TEXT  Algorithm Name (DCM 111001), Algorithm Version (DCM 111003)
      CONTAINS TEXT  Impression: one human-readable line

The patient and study modules are copied from the source instances (the SR
belongs to the same study), as DICOM expects; the SR never leaves the hospital.
Every source instance is listed as evidence.
"""

from __future__ import annotations

import copy

import highdicom as hd
from highdicom.sr import (
    CodeContentItem,
    ContainerContentItem,
    ImageContentItem,
    NumContentItem,
    RelationshipTypeValues,
    TextContentItem,
    UIDRefContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from ftlct.agent.inference.results import SeriesResult

SCHEME = "99FTLCT"  # private coding scheme for our labels (PS3.16 8.2: 99 prefix)
ALGORITHM_NAME = "ftl-ct MobileNetV2 transfer model"
SR_SERIES_NUMBER = 9900  # high, so PACS viewers list it after the images

REPORT = Code("18748-4", "LN", "Diagnostic imaging report")
FINDINGS = Code("121070", "DCM", "Findings")
FINDING = Code("121071", "DCM", "Finding")
PROBABILITY = Code("PROB", SCHEME, "Probability of finding")
SOURCE = Code("121112", "DCM", "Source of Measurement")
SERIES_UID = Code("112002", "DCM", "Series Instance UID")
ALG_NAME = Code("111001", "DCM", "Algorithm Name")
ALG_VERSION = Code("111003", "DCM", "Algorithm Version")
IMPRESSION = Code("121073", "DCM", "Impression")
RATIO = Code("{ratio}", "UCUM", "ratio")

CONTAINS = RelationshipTypeValues.CONTAINS
HAS_PROPERTIES = RelationshipTypeValues.HAS_PROPERTIES
INFERRED_FROM = RelationshipTypeValues.INFERRED_FROM

# Type 2 attributes highdicom copies from the first evidence item; absent in some sources.
_PATIENT_STUDY_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def label_code(label: str) -> Code:
    return Code(label[:16].upper() or "UNKNOWN", SCHEME, label)


def sr_uids(result: SeriesResult) -> tuple[str, str]:
    """(SR series UID, SR instance UID): derived from the source, so a resend is idempotent."""
    series = generate_uid(entropy_srcs=["ftlct-sr-series", result.series_uid])
    instance = generate_uid(
        entropy_srcs=["ftlct-sr", result.series_uid, str(result.id), result.model_version]
    )
    return series, instance


def _evidence(headers: list[Dataset]) -> list[Dataset]:
    evidence = []
    for header in headers:
        item = copy.copy(header)
        for keyword in _PATIENT_STUDY_KEYWORDS:
            if keyword not in item:
                setattr(item, keyword, None)
        evidence.append(item)
    return evidence


def _probability(p: float, relationship, label: str | None = None) -> NumContentItem:
    item = NumContentItem(
        name=PROBABILITY, value=round(float(p), 6), unit=RATIO, relationship_type=relationship
    )
    if label is not None:  # which label this probability is of
        item.ContentSequence = [CodeContentItem(FINDING, label_code(label), HAS_PROPERTIES)]
    return item


def build_result_sr(
    result: SeriesResult, headers: list[Dataset], manufacturer: str = "ftl-ct"
) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR stating ``result`` about the series whose headers are ``headers``."""
    if not headers:
        raise ValueError("an SR needs at least one source instance")
    by_uid = {str(h.SOPInstanceUID): h for h in headers}
    probability = result.probabilities[result.label]

    finding = CodeContentItem(FINDING, label_code(result.label), CONTAINS)
    finding_children = [_probability(probability, HAS_PROPERTIES)]
    for uid in result.key_instances:
        if uid in by_uid:
            finding_children.append(
                ImageContentItem(
                    SOURCE, by_uid[uid].SOPClassUID, uid, relationship_type=INFERRED_FROM
                )
            )
    finding.ContentSequence = finding_children

    findings = ContainerContentItem(FINDINGS, relationship_type=CONTAINS)
    findings.ContentSequence = [
        finding,
        *(_probability(p, CONTAINS, label) for label, p in result.probabilities.items()),
        UIDRefContentItem(SERIES_UID, result.series_uid, CONTAINS),
    ]
    impression = (
        f"{result.label} (p={probability:.3f}) by model {result.model_version}, "
        f"{result.n_slices} slices, rule {result.aggregation}; "
        "automated result, not verified by a physician"
    )
    root = ContainerContentItem(REPORT, template_id="2000")
    root.ContentSequence = [
        findings,
        TextContentItem(ALG_NAME, ALGORITHM_NAME, CONTAINS),
        TextContentItem(ALG_VERSION, result.model_version[:1024], CONTAINS),
        TextContentItem(IMPRESSION, impression, CONTAINS),
    ]
    series_uid, instance_uid = sr_uids(result)
    return hd.sr.ComprehensiveSR(
        evidence=_evidence(headers),
        content=root,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        series_description="ftl-ct AI result",
    )
