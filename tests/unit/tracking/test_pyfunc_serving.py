"""Bad requests to the served pyfunc model get HTTP 400 and one line of JSON, never a stack trace (issue 19 item 7).

MLflow's own scoring server app (``mlflow.pyfunc.scoring_server.init``, what ``mlflow models serve`` runs) is driven
in-process through FastAPI's test client, on a pyfunc model saved with medtune's signature whose predictor has a
stand-in model: every bad request here is refused before the model would run (a good request's answers are in
test_pyfunc_model.py and the serving integration test).
"""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from components.tracking.pyfunc_model import (
    MAX_NEW_TOKENS,
    MAX_NEW_TOKENS_LIMIT,
    MedtuneVLMModel,
    PredictionInputError,
    VLMPredictor,
    input_rows,
    max_new_tokens,
    signature,
)

NOT_IMAGE = "row 0: column 'image' is not a base64 PNG/JPEG image"


def png_base64(size: int = 8) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (size, size), 128).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Refusing(MedtuneVLMModel):
    """The pyfunc with a stand-in model: validation is real; a request that passes it gets a fixed answer."""

    def load_context(self, context: Any) -> None:
        stand_in = SimpleNamespace(input_kind="tensor", image_size=8, channels=1, args=None)
        self.predictor = Answering(stand_in, None)


class Answering(VLMPredictor):
    """The real checks and image decoding (:meth:`VLMPredictor.inputs`), then a fixed answer instead of the VLM's;
    the question "crash" stands for a bug inside the model."""

    def predict(self, rows: Any, max_new_tokens: int = MAX_NEW_TOKENS) -> list[dict[str, str]]:
        records, _ = self.inputs(rows)
        if any("crash" in r["conversations"][0]["value"] for r in records):
            raise RuntimeError("a bug, not a bad request\nwith a second line")
        return [{"answer": f"{max_new_tokens} tokens", "image": ""} for _ in records]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import mlflow
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    path = tmp_path_factory.mktemp("served") / "model"
    mlflow.pyfunc.save_model(str(path), python_model=Refusing(), signature=signature())
    return TestClient(scoring_server.init(mlflow.pyfunc.load_model(str(path))))


def post(client: Any, body: Any, content_type: str = "application/json") -> Any:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post("/invocations", content=data, headers={"Content-Type": content_type})


def assert_bad_request(response: Any, *needles: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    assert "\n" not in response.text and "Traceback" not in response.text, response.text
    error: dict[str, Any] = json.loads(response.text)
    assert error["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST") and "stack_trace" not in error
    for needle in needles:
        assert needle in error["message"], error["message"]
    return error


def rows(**change: Any) -> dict[str, Any]:
    row = {"task": "comprehension", "question": "Is there a lesion?", "image": png_base64(), **change}
    return {"dataframe_records": [row]}


def test_a_good_request_is_answered(client: Any) -> None:
    response = post(client, rows())
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [{"answer": f"{MAX_NEW_TOKENS} tokens", "image": ""}]}
    response = post(client, {**rows(image="data:image/png;base64," + png_base64()), "params": {"max_new_tokens": 3}})
    assert response.json()["predictions"][0]["answer"] == "3 tokens"


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        (rows(image=base64.b64encode(b"not an image").decode()), [f"{NOT_IMAGE} (the decoded bytes are no image"]),
        (rows(image="%%% not base64 %%%"), [f"{NOT_IMAGE} (not valid base64)"]),
        (rows(task="segment"), ["row 0: task 'segment' is not one of ['comprehension', 'generation']"]),
        ({"dataframe_records": [{"task": "comprehension", "question": "q"}]}, ["image"]),  # the signature's check
        ({"dataframe_records": [{"text": "hello"}]}, ["task"]),
        ({**rows(), "params": {"max_new_tokens": 0}}, [f"between 1 and {MAX_NEW_TOKENS_LIMIT}, got 0"]),
        ({**rows(), "params": {"max_new_tokens": "many"}}, ["max_new_tokens"]),
        ('{"dataframe_records": [', ["valid JSON"]),
        ({"rows": []}, ["dataframe_split"]),
    ],
    ids=[
        "non-image",
        "non-base64",
        "unknown-task",
        "missing-column",
        "wrong-columns",
        "zero-cap",
        "text-cap",
        "garbage-json",
        "unknown-format",
    ],  # fmt: skip
)
def test_bad_requests_get_400_and_one_line_of_json(client: Any, body: Any, needles: list[str]) -> None:
    assert_bad_request(post(client, body), *needles)


def test_a_failure_inside_the_model_is_a_one_line_500(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    response = post(client, rows(question="crash"))
    assert response.status_code == 500, response.text
    assert "\n" not in response.text and "Traceback" not in response.text, response.text
    assert "prediction failed (RuntimeError); the server's log has the details" in response.json()["message"]
    assert "stack_trace" not in response.json()
    assert "a bug, not a bad request" in caplog.text  # the traceback went to the server's log


def test_validation_without_a_server() -> None:
    model = Refusing()
    model.load_context(None)
    with pytest.raises(MlflowException) as raised:
        model.predict(None, pd.DataFrame([{"task": "comprehension", "question": "q", "image": "eA=="}]))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE" and raised.value.get_http_status_code() == 400
    assert raised.value.message == f"{NOT_IMAGE} (the decoded bytes are no image format Pillow reads)"
    assert "\n" not in raised.value.message
    with pytest.raises(PredictionInputError, match=r"missing column\(s\) \['question', 'image'\]"):
        input_rows([{"task": "comprehension"}])
    assert input_rows({"task": ["generation"], "question": ["q"], "image": ["x"], "extra": [1]}) == [
        {"task": "generation", "question": "q", "image": "x"}
    ]
    assert max_new_tokens(None) == MAX_NEW_TOKENS and max_new_tokens({"max_new_tokens": "12"}) == 12
    for bad in (True, 2.5, -1, MAX_NEW_TOKENS_LIMIT + 1):
        with pytest.raises(PredictionInputError, match="max_new_tokens"):
            max_new_tokens({"max_new_tokens": bad})
