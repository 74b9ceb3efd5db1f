"""De-identification of DICOM headers: the Basic Application Level Confidentiality Profile (DICOM PS3.15
Annex E, table E.1-1) with the "retain longitudinal temporal information with modified dates" option.

What happens to a dataset (:func:`deidentify_dataset`):

* attributes in :data:`REMOVE` are deleted (sequences with everything inside them), private tags (at every
  level) and overlay / curve data too; attributes in :data:`EMPTY` are kept but emptied (type 2 in most IODs);
* PatientName and PatientID become the keyed pseudonym (:func:`pseudonym`), which is also the record's
  ``group``; any other person name anywhere in the dataset (VR PN) is emptied;
* every date (VR DA, and the date part of DT) anywhere is shifted back by a per-patient number of days derived
  from the key and the patient id, so intervals within a patient survive; PatientBirthDate is emptied;
* every instance UID (VR UI, not a well-known DICOM class/transfer-syntax UID) is re-mapped to a keyed
  ``2.25.<n>`` UID, so references between files of one study stay consistent;
* ``PatientIdentityRemoved = YES`` and ``DeidentificationMethod`` record what was done.

The key comes from :func:`load_deid_key` (environment variable, else a key file created once). Pixel data is
not touched: burned-in text is handled by the reader (files flagged ``BurnedInAnnotation = YES`` are refused).

    from components.data.deid import deidentify_dataset, load_deid_key, pseudonym
    key = load_deid_key("MEDTUNE_DEID_KEY", Path(".medtune/secrets/deid.key"))
    group = pseudonym(key, str(ds.PatientID)); deidentify_dataset(ds, key)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

# fmt: off
#: Deleted (PS3.15 E.1-1 action X, and X/Z, X/D ... where deletion is allowed).
REMOVE: tuple[str, ...] = (
    "AcquisitionComments", "AcquisitionContextSequence", "AcquisitionDeviceProcessingDescription",
    "AcquisitionProtocolDescription", "ActualHumanPerformersSequence", "AdditionalPatientHistory", "AdmissionID",
    "AdmittingDate", "AdmittingDiagnosesCodeSequence", "AdmittingDiagnosesDescription", "AdmittingTime",
    "Allergies", "Arbitrary", "AuthorObserverSequence", "BranchOfService", "CassetteID",
    "CommentsOnThePerformedProcedureStep", "ConfidentialityConstraintOnPatientDataDescription",
    "ContentCreatorIdentificationCodeSequence", "ContributionDescription", "CountryOfResidence",
    "CurrentPatientLocation", "CustodialOrganizationSequence", "DataSetTrailingPadding", "DerivationDescription",
    "DetectorID", "DeviceSerialNumber", "DigitalSignaturesSequence", "DischargeDiagnosisDescription",
    "DistributionAddress", "DistributionName", "EthnicGroup", "FrameComments", "GantryID", "GeneratorID",
    "HumanPerformerName", "HumanPerformerOrganization", "IconImageSequence", "IdentifyingComments",
    "ImageComments", "ImagePresentationComments", "ImagingServiceRequestComments", "Impressions",
    "InstitutionAddress", "InstitutionCodeSequence", "InstitutionName", "InstitutionalDepartmentName",
    "InsurancePlanIdentification", "IntendedRecipientsOfResultsIdentificationSequence",
    "InterpretationApproverSequence", "InterpretationAuthor", "InterpretationDiagnosisDescription",
    "InterpretationIDIssuer", "InterpretationRecorder", "InterpretationText", "InterpretationTranscriber",
    "IssuerOfAdmissionID", "IssuerOfPatientID", "IssuerOfServiceEpisodeID", "MAC", "MedicalAlerts",
    "MedicalRecordLocator", "MilitaryRank", "ModifiedAttributesSequence", "ModifiedImageDescription",
    "ModifyingDeviceID", "NameOfPhysiciansReadingStudy", "NamesOfIntendedRecipientsOfResults", "Occupation",
    "OperatorIdentificationSequence", "OperatorsName", "OriginalAttributesSequence", "OrderCallbackPhoneNumber",
    "OrderEnteredBy", "OrderEntererLocation", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
    "ParticipantSequence", "PatientAddress", "PatientAge", "PatientBirthName", "PatientBirthTime",
    "PatientComments", "PatientInsurancePlanCodeSequence", "PatientMotherBirthName",
    "PatientPrimaryLanguageCodeSequence", "PatientPrimaryLanguageModifierCodeSequence",
    "PatientReligiousPreference", "PatientSexNeutered", "PatientSize", "PatientState", "PatientTelephoneNumbers",
    "PatientTransportArrangements", "PatientWeight", "PerformedLocation", "PerformedProcedureStepDescription",
    "PerformedProcedureStepID", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedStationAETitle", "PerformedStationGeographicLocationCodeSequence", "PerformedStationName",
    "PerformedStationNameCodeSequence", "PerformingPhysicianIdentificationSequence", "PerformingPhysicianName",
    "PersonAddress", "PersonTelephoneNumbers", "PhysicianApprovingInterpretation",
    "PhysiciansReadingStudyIdentificationSequence", "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "PlateID", "PreMedication", "PregnancyStatus", "ProtocolName", "ReasonForTheImagingServiceRequest",
    "ReasonForStudy", "ReferencedDigitalSignatureSequence", "ReferencedPatientAliasSequence",
    "ReferencedPatientSequence", "ReferencedSOPInstanceMACSequence", "ReferringPhysicianAddress",
    "ReferringPhysicianIdentificationSequence", "ReferringPhysicianTelephoneNumbers", "RegionOfResidence",
    "RequestAttributesSequence", "RequestedContrastAgent", "RequestedProcedureComments",
    "RequestedProcedureDescription", "RequestedProcedureID", "RequestedProcedureLocation", "RequestingPhysician",
    "RequestingService", "ResponsibleOrganization", "ResponsiblePerson", "ResultsComments",
    "ResultsDistributionListSequence", "ResultsIDIssuer", "ReviewerName", "ScheduledHumanPerformersSequence",
    "ScheduledPatientInstitutionResidence", "ScheduledPerformingPhysicianIdentificationSequence",
    "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription", "ScheduledProcedureStepEndDate",
    "ScheduledProcedureStepEndTime", "ScheduledProcedureStepLocation", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "ScheduledStationAETitle", "ScheduledStationGeographicLocationCodeSequence",
    "ScheduledStationName", "ScheduledStationNameCodeSequence", "ScheduledStudyLocation",
    "ScheduledStudyLocationAETitle", "SeriesDescription", "ServiceEpisodeDescription", "ServiceEpisodeID",
    "SmokingStatus", "SpecialNeeds", "StationName", "StudyComments", "StudyDescription", "StudyIDIssuer",
    "TextComments", "TextString", "TimezoneOffsetFromUTC", "TopicAuthor", "TopicKeywords", "TopicSubject",
    "TopicTitle", "VerifyingOrganization", "VisitComments",
)

#: Kept but emptied (action Z: type 2 attributes most IODs require to be present).
EMPTY: tuple[str, ...] = (
    "AccessionNumber", "ContentCreatorName", "FillerOrderNumberImagingServiceRequest", "PatientBirthDate",
    "PatientSex", "PlacerOrderNumberImagingServiceRequest", "ReferringPhysicianName", "StudyID", "StudyTime",
    "SeriesTime", "AcquisitionTime", "ContentTime", "InstanceCreationTime", "VerifyingObserverName",
)

#: Replaced by the pseudonym (action Z allows a dummy value; a keyed pseudonym keeps files of one patient together).
PSEUDONYMISED: tuple[str, ...] = ("PatientName", "PatientID")

#: Dates that are shifted (modified dates option); every other DA/DT element is shifted as well by the sweep.
SHIFTED_DATES: tuple[str, ...] = (
    "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate", "AcquisitionDateTime",
)

# fmt: on

METHOD = "PS3.15 E.1-1 basic profile; dates shifted; UIDs remapped"  # LO: at most 64 characters
_PSEUDONYM_HEX = 16


def pseudonym(key: bytes, patient_id: str) -> str:
    """Keyed, stable pseudonym of a patient id: ``pt-`` + 16 hex digits of HMAC-SHA256(key, id)."""
    return "pt-" + hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:_PSEUDONYM_HEX]


def date_shift_days(key: bytes, patient_id: str, max_days: int) -> int:
    """Days (1..max_days) by which this patient's dates move back; the same for all files of the patient."""
    digest = hmac.new(key, b"date-shift:" + patient_id.encode("utf-8"), hashlib.sha256).digest()
    return 1 + int.from_bytes(digest[:8], "big") % max(1, max_days)


def remap_uid(key: bytes, uid: str) -> str:
    """A keyed replacement UID under the UUID-derived root 2.25 (at most 44 characters)."""
    digest = hmac.new(key, b"uid:" + uid.encode("ascii", "replace"), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def load_deid_key(env_var: str, key_file: Path) -> bytes:
    """The secret key for pseudonyms: ``$env_var`` when set, else ``key_file`` (created once with 32 random
    bytes, mode 0600). The key is never logged; errors name the variable or file, not the value."""
    value = os.environ.get(env_var)
    if value:
        if len(value) < 16:
            raise ValueError(f"${env_var} holds a de-identification key shorter than 16 characters; use a longer one")
        return value.encode("utf-8")
    key_file = Path(key_file)
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: read theirs
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
    data = key_file.read_bytes()
    if len(data) < 16:
        raise ValueError(f"de-identification key file {key_file} holds under 16 bytes; delete it to make a new one")
    return data


def _shift_da(value: str, days: int) -> str:
    text = value.strip()
    if len(text) < 8 or not text[:8].isdigit():
        return ""  # unparseable dates are dropped rather than kept
    try:
        day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return ""
    return (day - dt.timedelta(days=days)).strftime("%Y%m%d") + text[8:]


def _is_known_uid(value: str) -> bool:
    from pydicom.uid import UID

    return UID(value).name != value  # in pydicom's dictionary of SOP classes, transfer syntaxes ...


_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)


def _is_overlay_or_curve(tag: Any) -> bool:
    group, elem = tag.group, tag.element
    return (0x5000 <= group <= 0x50FF) or (0x6000 <= group <= 0x60FF and elem in (0x3000, 0x4000))


def _sweep(ds: Any, key: bytes, days: int, pseudo: str) -> None:
    from pydicom.multival import MultiValue

    for kw in REMOVE:
        if kw in ds:
            delattr(ds, kw)
    for tag in list(ds.keys()):
        if tag.is_private or _is_overlay_or_curve(tag):
            del ds[tag]
            continue
        if tag in _PIXEL_TAGS:  # left unread: a deferred pixel element stays on disk
            continue
        elem = ds[tag]
        vr, value = elem.VR, elem.value
        if vr == "SQ":
            for item in value or []:
                _sweep(item, key, days, pseudo)
        elif elem.keyword in PSEUDONYMISED:
            elem.value = pseudo
        elif elem.keyword in EMPTY or vr == "PN":
            elem.value = ""
        elif vr in ("DA", "DT") and value:
            vals = value if isinstance(value, MultiValue) else [value]
            shifted = [_shift_da(str(v), days) for v in vals]
            elem.value = shifted if len(shifted) > 1 else shifted[0]
        elif vr == "UI" and value:
            vals = value if isinstance(value, MultiValue) else [value]
            mapped = [str(v) if _is_known_uid(str(v)) else remap_uid(key, str(v)) for v in vals]
            elem.value = mapped if len(mapped) > 1 else mapped[0]


def deidentify_dataset(ds: Any, key: bytes, *, max_date_shift_days: int = 365, patient_id: str | None = None) -> Any:
    """De-identify a pydicom Dataset in place and return it (see the module docstring for what changes).

    ``patient_id`` overrides the id the pseudonym and date shift derive from (default: the PatientID element).
    """
    pid = patient_id if patient_id is not None else str(ds.get("PatientID", "") or "").strip()
    pseudo = pseudonym(key, pid)
    days = date_shift_days(key, pid, max_date_shift_days)
    _sweep(ds, key, days, pseudo)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        uid = str(meta.MediaStorageSOPInstanceUID)
        meta.MediaStorageSOPInstanceUID = uid if _is_known_uid(uid) else remap_uid(key, uid)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    return ds
