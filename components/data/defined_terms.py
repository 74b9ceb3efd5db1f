"""DICOM defined terms for the two header values that become record text: Modality and Body Part Examined.

Free text never becomes record text (issue 18): a header value is looked up in the standard's defined terms and
anything else becomes ``other``. A hospital's BodyPartExamined sometimes holds a word typed at the console
(a name, a ward, a note); a regular expression cannot tell a name from an organ, a closed list can.

* Modality: the defined terms of PS3.3 C.7.3.1.1.1 (current and retired), :data:`MODALITY_TERMS`.
* Body Part Examined: PS3.16 Annex L ("Correspondence of Anatomic Region Codes and Body Part Examined Defined
  Terms"). The code meanings of CID 4031 (Common Anatomic Regions) come from pydicom's copy of PS3.16, so they
  follow the standard pydicom ships; Annex L's short forms (``CSPINE``, ``HEADNECK``, ``WHOLEBODY`` ...) are
  listed in :data:`LEGACY_BODY_PARTS`. A value matches after upper-casing and dropping spaces, underscores,
  hyphens and commas, so ``"WHOLE BODY"``, ``"Whole_Body"`` and ``"WHOLEBODY"`` are one term.

    >>> body_part_term("ABDOMEN"), body_part_term("WHOLE BODY"), body_part_term("Kestrelmoor")
    ('abdomen', 'entire body', 'other')
    >>> modality_term("MR"), modality_term("Kestrelmoor")
    ('MR', 'other')
"""

from __future__ import annotations

import re
from functools import cache

# fmt: off
#: PS3.3 C.7.3.1.1.1 Modality defined terms, current and retired.
MODALITY_TERMS: frozenset[str] = frozenset((
    "ANN", "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CFM", "CR", "CT", "CTPROTOCOL", "DMS", "DG", "DOC", "DX",
    "ECG", "EEG", "EMG", "EOG", "EPS", "ES", "FID", "GM", "HC", "HD", "IO", "IOL", "IVOCT", "IVUS", "KER", "KO",
    "LEN", "LS", "MG", "MR", "M3D", "NM", "OAM", "OCT", "OP", "OPM", "OPT", "OPTBSV", "OPTENF", "OPV", "OSS", "OT",
    "PA", "PLAN", "POS", "PR", "PT", "PX", "REG", "RESP", "RF", "RG", "RTDOSE", "RTIMAGE", "RTINTENT", "RTPLAN",
    "RTRAD", "RTRECORD", "RTSEGANN", "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF", "STAIN", "TEXTUREMAP", "TG",
    "US", "VA", "XA", "XAPROTOCOL", "XC",
    # retired
    "AS", "CD", "CF", "CP", "CS", "DD", "DF", "DM", "DS", "EC", "FA", "FS", "LP", "MA", "MS", "OPR", "ST", "VF",
))

#: PS3.16 Annex L short forms that are not a CID 4031 meaning with its spaces dropped, with the meaning they stand for.
LEGACY_BODY_PARTS: dict[str, str] = {
    "ABDOMENPELVIS": "abdomen and pelvis", "ACJOINT": "acromioclavicular joint", "ANKLE": "ankle joint",
    "ARM": "upper arm", "BRAIN": "brain", "CAROTID": "carotid artery", "CHESTABDOMEN": "chest and abdomen",
    "CHESTABDPELVIS": "chest, abdomen and pelvis", "CIRCLEOFWILLIS": "circle of willis", "CSPINE": "cervical spine",
    "CTSPINE": "cervico-thoracic spine", "EAR": "ear", "ELBOW": "elbow joint", "EXTREMITY": "extremity",
    "GALLBLADDER": "gallbladder", "HEADNECK": "head and neck", "HIP": "hip", "IAC": "internal auditory canal",
    "JAW": "jaw region", "KIDNEY": "kidney", "LEG": "lower leg", "LSPINE": "lumbar spine",
    "LSSPINE": "lumbo-sacral spine", "NECKCHEST": "neck and chest", "NECKCHESTABDOMEN": "neck, chest and abdomen",
    "NECKCHESTABDPELV": "neck, chest, abdomen and pelvis", "ORBIT": "orbital structure", "SCJOINT":
    "sternoclavicular joint", "SCSPINE": "sacro-coccygeal spine", "SHOULDER": "shoulder", "SIJOINT":
    "sacroiliac joint", "SPINE": "spine", "SSPINE": "sacrum", "TLSPINE": "thoraco-lumbar spine", "TMJ":
    "temporomandibular joint", "TSPINE": "thoracic spine", "WHOLEBODY": "entire body", "WRIST": "wrist joint",
    "LIVER": "liver", "LUNG": "lung", "THYROID": "thyroid", "SPLEEN": "spleen", "AORTA": "aorta",
}
# fmt: on

OTHER = "other"
_SEPARATORS = re.compile(r"[\s_\-,]+")


def _key(value: str) -> str:
    return _SEPARATORS.sub("", value).upper()


@cache
def body_part_terms() -> dict[str, str]:
    """Normalised defined term -> the meaning a record shows (lower case)."""
    from pydicom.sr.codedict import codes

    cid = codes.CID4031
    terms = {_key(getattr(cid, name).meaning): getattr(cid, name).meaning.lower() for name in cid.dir()}
    terms.update(LEGACY_BODY_PARTS)
    return terms


def body_part_term(value: object) -> str:
    """The record's body part for a BodyPartExamined value: its defined meaning, ``unknown`` when empty, else
    ``other`` (free text never passes)."""
    text = str(value or "").strip()
    if not text:
        return "unknown"
    return body_part_terms().get(_key(text), OTHER)


def modality_term(value: object) -> str:
    """The Modality code when it is a defined term, ``unknown`` when empty, else ``other``."""
    text = str(value or "").strip().upper()
    if not text:
        return "unknown"
    return text if text in MODALITY_TERMS else OTHER
