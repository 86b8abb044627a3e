"""The closed vocabulary of device names the scanner profile may publish.

Manufacturer, ManufacturerModelName and ConvolutionKernel are free text in a
header, and headers are written by people and by misconfigured scanners: a
name, a date or an accession number can sit in them. So the twin never
forwards them; it maps each onto a value from the lists below, and anything
it does not recognise becomes ``other``. Model names are matched by their
leading words and published as the list's spelling, never the header's.
"""

from __future__ import annotations

import re

OTHER = "other"

# First word(s) of Manufacturer as scanners write it -> the name published.
VENDORS = {
    "SIEMENS": "Siemens",
    "GE": "GE",
    "GEMS": "GE",
    "PHILIPS": "Philips",
    "TOSHIBA": "Toshiba",
    "CANON": "Canon",
    "HITACHI": "Hitachi",
    "FUJIFILM": "Fujifilm",
    "UIH": "United Imaging",
    "UNITED IMAGING": "United Imaging",
    "NEUSOFT": "Neusoft",
    "SAMSUNG": "Samsung",
    "IMATRON": "Imatron",
    "PICKER": "Picker",
    "MARCONI": "Marconi",
    "ELSCINT": "Elscint",
}

# CT model families and models, as vendors spell them; the longest match wins.
MODELS = (
    "SOMATOM",
    "SOMATOM Force",
    "SOMATOM Drive",
    "SOMATOM Edge Plus",
    "SOMATOM Definition",
    "SOMATOM Definition AS",
    "SOMATOM Definition AS+",
    "SOMATOM Definition Edge",
    "SOMATOM Definition Flash",
    "SOMATOM Emotion",
    "SOMATOM Perspective",
    "SOMATOM Scope",
    "SOMATOM Sensation",
    "SOMATOM go.",
    "SOMATOM X.cite",
    "Sensation 16",
    "Sensation 64",
    "Sensation Open",
    "Emotion",
    "Emotion 6",
    "Emotion 16",
    "NAEOTOM Alpha",
    "LightSpeed",
    "LightSpeed16",
    "LightSpeed Plus",
    "LightSpeed Pro 16",
    "LightSpeed Pro 32",
    "LightSpeed QX/i",
    "LightSpeed RT",
    "LightSpeed RT16",
    "LightSpeed Ultra",
    "LightSpeed VCT",
    "Revolution",
    "Revolution CT",
    "Revolution EVO",
    "Revolution HD",
    "Revolution ACT",
    "Revolution Apex",
    "Discovery CT",
    "Discovery CT590 RT",
    "Discovery CT750 HD",
    "Optima CT520",
    "Optima CT540",
    "Optima CT660",
    "BrightSpeed",
    "HiSpeed",
    "Brilliance",
    "Brilliance 16",
    "Brilliance 40",
    "Brilliance 64",
    "Brilliance iCT",
    "iCT",
    "Ingenuity",
    "Ingenuity CT",
    "Ingenuity Core",
    "IQon",
    "Incisive CT",
    "Access CT",
    "MX 16-slice",
    "Mx8000",
    "Aquilion",
    "Aquilion 16",
    "Aquilion 64",
    "Aquilion ONE",
    "Aquilion PRIME",
    "Aquilion Lightning",
    "Aquilion Precision",
    "Asteion",
    "Alexion",
    "uCT",
    "uCT 510",
    "uCT 530",
    "uCT 760",
    "uCT 780",
    "SCENARIA",
    "SUPRIA",
    "ECLOS",
    "NeuViz",
    "NeuViz 64",
    "NeuViz 128",
)

# Reconstruction kernels: Siemens (B30f, Br40d, Hr38, I70f), Canon/Toshiba (FC13),
# Philips (A, B, C, D, E, L, YA-YD, UA, UB) and GE's named kernels.
_KERNEL = re.compile(r"^(?:[A-Z][a-z]?\d{2}[a-z]?|FC\d{2}|[A-EL]|Y[A-D]|U[AB])$")
GE_KERNELS = frozenset(
    ("STANDARD", "SOFT", "BONE", "BONEPLUS", "LUNG", "DETAIL", "CHEST", "EDGE", "ULTRA")
)


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Z0-9+]+", text.upper())


def _compact(text: str) -> str:
    return "".join(_words(text))


_MODELS_BY_KEY = sorted(((_compact(m), m) for m in MODELS), key=lambda km: -len(km[0]))


def vendor(manufacturer: str | None) -> str:
    """The published vendor for a Manufacturer value ('' if absent, ``other`` if unknown)."""
    words = _words(manufacturer or "")
    if not words:
        return ""
    for key, name in VENDORS.items():
        wanted = key.split()
        if words[: len(wanted)] == wanted:
            return name
    return OTHER


def model(model_name: str | None) -> str:
    """The published model for a ManufacturerModelName ('' if absent, ``other`` if unknown)."""
    compact = _compact(model_name or "")
    if not compact:
        return ""
    for key, name in _MODELS_BY_KEY:
        if compact.startswith(key):
            return name
    return OTHER


def kernel(convolution_kernel: str | None) -> str:
    """The first value of ConvolutionKernel if it is a known kernel code, else ``other``."""
    first = (convolution_kernel or "").split("/")[0].strip()
    if not first:
        return ""
    if _KERNEL.match(first) or first.upper() in GE_KERNELS:
        return first.upper() if first.upper() in GE_KERNELS else first
    return OTHER
