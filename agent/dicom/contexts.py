"""What the SCP accepts: every storage SOP class, in the image transfer syntaxes.

Instances are stored as received, so any syntax a CT/PACS may use is welcome;
video (MPEG, H.264, HEVC), JPIP-referenced and audio syntaxes are left out: a
sender proposing one also proposes an uncompressed fallback. The list is kept
short on purpose: pynetdicom deep-copies the supported contexts for every
association, which costs ~2 ms per transfer syntax here.
"""

from __future__ import annotations

from pydicom import uid
from pynetdicom import AllStoragePresentationContexts

TRANSFER_SYNTAXES = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,  # .57
    uid.JPEGLosslessSV1,  # .70, what CT archives mostly hold
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.RLELossless,
]

STORAGE_SOP_CLASSES = [context.abstract_syntax for context in AllStoragePresentationContexts]
