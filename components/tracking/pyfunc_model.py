"""medtune's trained VLM as an MLflow pyfunc model: a question about an image in, an answer (or an image) out.

    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/medtune-vlm@champion")
    out = model.predict(pd.DataFrame([
        {"task": "comprehension", "question": "Is there a lesion?", "image": png_base64},
        {"task": "generation", "question": "Convert this CT slice into a T2-weighted MRI.", "image": png_base64},
    ]))
    out["answer"][0]       # 'yes'
    out["image"][1]        # the generated image, base64 PNG (empty for comprehension rows)

The model's one artifact, ``model``, is the folder :func:`components.training.plugins.save_trained` writes plus the
VQ tokenizer (``vq/``): the base weights (safetensors), both peft plugins, the tokenizer with the image-code tokens and
the tensors the stages trained. Nothing is pickled: MLflow logs the model *from code* (``python_model`` is the path of
:mod:`components.tracking.pyfunc_entry`, which builds :class:`MedtuneVLMModel`), and ``load_context`` reads
safetensors and JSON only.

Rows are the ``comprehension`` task (greedy text answer, EOS ends it, the comprehension plugin) or ``generation``
(the generation plugin, ``<img_start>`` forced, exactly the VQ grid's count of code tokens, decoded by the VQ
decoder). The image is any PNG/JPEG, converted to the model's channels and resized (bicubic) to its image size, as
the dataset build does; the question is put after ``<image>`` in the training template.
Choices where nothing prescribes one: the frame columns are strings (so the signature is the same for every
serving path), a missing image is an error rather than a text-only question (the VLM was trained with an image in
every prompt), and answers are capped at 64 new tokens (the evaluation's caption length), settable per call with
the ``max_new_tokens`` param.

Served (``mlflow models serve``, README "Serving the champion"), a request the model cannot answer (unknown task, a
missing or non-string column, an image that does not decode, a bad ``max_new_tokens``) raises
``MlflowException(INVALID_PARAMETER_VALUE)``, which MLflow's scoring server answers with HTTP 400 and a one-line JSON
body; anything else that fails is logged with its traceback on the server and answered with a one-line 500, so a
client never sees a stack trace (issue 19 item 7). An image may also be a ``data:image/png;base64,...`` URL.

:class:`VLMPredictor` does the work without MLflow (tests and the CLI use it directly); :class:`MedtuneVLMModel`
is the thin pyfunc wrapper.
"""

from __future__ import annotations

import base64
import io
import logging
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

TASKS = ("comprehension", "generation")
COLUMNS = ("task", "question", "image")
OUTPUTS = ("answer", "image")
MAX_NEW_TOKENS = 64
MAX_NEW_TOKENS_LIMIT = 1024  # a request's cap on its cap: one row asking for more is refused, not run for minutes
ARTIFACT = "model"  # the key of the model folder in the pyfunc's artifacts

logger = logging.getLogger(__name__)


class PredictionInputError(ValueError):
    """A row the model cannot answer (unknown task, missing column, an image that does not decode)."""


def encode_png(pixels: Any) -> str:
    """(C, H, W) float in [0, 1] (torch or numpy) -> base64 PNG (grey for one channel, RGB for three)."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(pixels.detach().cpu() if hasattr(pixels, "detach") else pixels, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"expected pixels of shape (1 or 3, H, W), got {arr.shape}")
    img = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    pil = Image.fromarray(img[0], "L") if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0), "RGB")
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def file_to_base64(path: str | Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def decode_pil(data: str, row: int = 0) -> Any:
    """Base64 PNG/JPEG -> an RGB PIL image (a whole HF VLM's processor takes it from there)."""
    from PIL import Image, UnidentifiedImageError

    if data.startswith("data:") and "," in data:  # a data URL: data:image/png;base64,<base64>
        data = data.split(",", 1)[1]
    bad = f"row {row}: column 'image' is not a base64 PNG/JPEG image"
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise PredictionInputError(f"{bad} (not valid base64)") from None
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            return opened.convert("RGB")
    except UnidentifiedImageError:
        raise PredictionInputError(f"{bad} (the decoded bytes are no image format Pillow reads)") from None
    except (ValueError, OSError, Image.DecompressionBombError) as e:  # truncated, too many pixels, ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PredictionInputError(f"{bad} ({reason})") from None


def decode_image(data: str, image_size: int, channels: int, row: int = 0) -> Any:
    """Base64 image -> the tiny encoder's input (C, S, S), ``(x/255 - 0.5)/0.5`` as in training
    (:func:`components.models.collate.make_image_loader`)."""
    import numpy as np
    import torch
    from PIL import Image

    img = decode_pil(data, row)
    img = img.convert("L") if channels == 1 else img
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()) / 255.0
    arr = arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1)
    return (arr - 0.5) / 0.5


@dataclass
class VLMPredictor:
    """A loaded model folder: ``predict(rows)`` -> one ``{"answer", "image"}`` per row."""

    model: Any  # a MedVLM or HFVLM (components.models.backend) with its two plugins
    vq: Any  # components.models.vq.VQTokenizer

    @classmethod
    def load(cls, folder: str | Path) -> VLMPredictor:
        from components.models.vq import VQTokenizer
        from components.training.plugins import load_trained

        root = Path(folder)
        if not (root / "vq").is_dir():
            raise FileNotFoundError(f"{root} has no vq/ folder: the model artifact needs its VQ tokenizer")
        return cls(load_trained(root), VQTokenizer.load(root / "vq").eval())

    def inputs(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every row checked and its image decoded, before any generation: (records in the training template,
        images by key). Raises :class:`PredictionInputError` naming the first bad row."""
        from components.data.records import IMAGE_TOKEN
        from components.models.backend import renormaliser

        model = self.model
        images: dict[str, Any] = {}
        records: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            missing = [c for c in COLUMNS if not isinstance(row.get(c), str)]
            if missing:
                raise PredictionInputError(f"row {i}: missing or non-string column(s) {missing}; need {list(COLUMNS)}")
            if row["task"] not in TASKS:
                raise PredictionInputError(f"row {i}: task {row['task']!r} is not one of {list(TASKS)}")
            key = f"row{i}"
            if model.input_kind == "pil":
                images[key] = decode_pil(row["image"], i)
            else:
                pixels = decode_image(row["image"], model.image_size, model.channels, i)
                norm = renormaliser(model)
                images[key] = pixels if norm is None else norm(pixels)
            question = row["question"].replace(IMAGE_TOKEN, " ").strip()
            records.append({"task": row["task"], "image": key, "conversations": [
                {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"}]})  # fmt: skip
        return records, images

    def predict(self, rows: Sequence[Mapping[str, Any]], max_new_tokens: int = MAX_NEW_TOKENS) -> list[dict[str, str]]:
        import torch

        from components.evaluation.report import use_plugin
        from components.models.generate import answer_questions, generate_image_codes

        model = self.model
        records, images = self.inputs(rows)
        out = [{"answer": "", "image": ""} for _ in records]
        load = images.__getitem__
        asks = [i for i, r in enumerate(records) if r["task"] == "comprehension"]
        draws = [i for i, r in enumerate(records) if r["task"] == "generation"]
        if asks:
            use_plugin(model, "comprehension")
            answers = answer_questions(
                model, model.tokenizer, [records[i] for i in asks], load, max_new_tokens=max_new_tokens,
                max_length=model.max_length,
            )  # fmt: skip
            for i, text in zip(asks, answers, strict=True):
                out[i]["answer"] = text
        if draws:
            use_plugin(model, "generation")
            codes = generate_image_codes(
                model, model.tokenizer, [records[i] for i in draws], load, num_codes=int(self.vq.num_codes_per_image),
                max_length=model.max_length,
            )  # fmt: skip
            with torch.no_grad():
                pixels = self.vq.decode(codes)
            for i, image in zip(draws, pixels, strict=True):
                out[i]["image"] = encode_png(image)
            use_plugin(model, "comprehension")
        return out


class MedtuneVLMModel(PythonModel):
    """The pyfunc face of :class:`VLMPredictor` (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        self.predictor = VLMPredictor.load(context.artifacts[ARTIFACT])

    # MLflow reads this type hint: pd.DataFrame is one it accepts without inferring a schema from it (the
    # signature logged with the model describes the columns); any other hint, or none, prints a warning.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

        try:
            rows = input_rows(model_input)
            cap = max_new_tokens(params)
            answers = self.predictor.predict(rows, max_new_tokens=cap)
        except PredictionInputError as e:  # the scoring server answers 400 with this message, no traceback
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        except Exception as e:
            logger.exception("medtune pyfunc: prediction failed")  # the traceback stays in the server's log
            raise MlflowException(
                f"prediction failed ({type(e).__name__}); the server's log has the details", error_code=INTERNAL_ERROR
            ) from None
        return pd.DataFrame(answers, columns=list(OUTPUTS))


def input_rows(model_input: Any) -> list[dict[str, Any]]:
    """The request as rows (a DataFrame, or what makes one: a list of row dicts, a dict of columns), checked for
    the three columns; the rows' values are checked by :meth:`VLMPredictor.predict`."""
    try:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    except (ValueError, TypeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PredictionInputError(f"the input is not rows with columns {list(COLUMNS)} ({reason})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise PredictionInputError(
            f"missing column(s) {missing}; need {list(COLUMNS)}, got {list(map(str, frame.columns))}"
        )
    rows: list[dict[str, Any]] = frame[list(COLUMNS)].to_dict(orient="records")
    return rows


def max_new_tokens(params: Mapping[str, Any] | None) -> int:
    """The ``max_new_tokens`` param: a whole number in 1..:data:`MAX_NEW_TOKENS_LIMIT`, :data:`MAX_NEW_TOKENS` if
    absent."""
    value = (params or {}).get("max_new_tokens", MAX_NEW_TOKENS)
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not whole and not (isinstance(value, str) and value.strip().isdigit()):
        raise PredictionInputError(f"param max_new_tokens must be a whole number, got {value!r}")
    cap = int(value)
    if not 1 <= cap <= MAX_NEW_TOKENS_LIMIT:
        raise PredictionInputError(f"param max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {cap}")
    return cap


def signature() -> Any:
    """Input: task, question, image (base64) as strings; output: answer, image (base64 PNG or empty); param
    ``max_new_tokens``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", c) for c in COLUMNS]),
        outputs=Schema([ColSpec("string", c) for c in OUTPUTS]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", MAX_NEW_TOKENS)]),
    )


def input_example(image_b64: str, question: str = "What modality is this?") -> pd.DataFrame:
    """One comprehension row and one generation row over the same image."""
    return pd.DataFrame(
        [
            {"task": "comprehension", "question": question, "image": image_b64},
            {"task": "generation", "question": "Convert this CT slice into a T2-weighted MRI.", "image": image_b64},
        ],
        columns=list(COLUMNS),
    )
