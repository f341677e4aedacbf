"""The v2 routes ``deploykit serve`` answers itself, registered before kserve's (the first match wins).

- ``POST /v2/models/NAME/infer``: the body is always read as bytes and
  checked as JSON by deploykit (:func:`deploykit.serve.limits.check_v2_header`)
  before kserve decodes it: kserve's JSON route parses it with pydantic in lax
  mode, which turns ``"1"`` into ``1`` in a shape. Large responses are encoded
  in a worker thread, so health checks answer while they are.
- ``GET /v2/models/NAME``: kserve's metadata plus the platform, the version, the
  model's ``parameters`` (kind, class labels, samples, abstain threshold, temperature) and a ``description`` of
  each output (the Open Inference Protocol's optional ``parameters``).
- ``GET /v2/models/NAME/config``: the model's configuration in Triton's JSON form.
- ``/versions/VERSION`` forms of infer, metadata, ready and config: the version the
  model was found under (``<name>/<version>/model.onnx``, else "1"); another is a 404.
- ``POST /v2/repository/index``: the models, as Triton lists them (all READY).

Endpoint annotations are evaluated (no ``from __future__ import annotations``): FastAPI reads them.
"""

import asyncio

import orjson
from starlette.requests import Request

from deploykit.core.contract import SAMPLE_FIRST_OUTPUTS
from deploykit.serve.models import INLINE_VALUES, OnnxModel

PLATFORM = "onnxruntime_onnx"
_JSON = "application/json"


def register_routes(app, dataplane) -> None:
    """Add the routes above to ``app`` (before kserve's own)."""
    from fastapi import APIRouter

    routes = _Routes(dataplane)
    router = APIRouter(prefix="/v2")
    for path, endpoint, method in [
        ("/models/{model_name}/infer", routes.infer, "POST"),
        ("/models/{model_name}/versions/{model_version}/infer", routes.infer, "POST"),
        ("/models/{model_name}", routes.metadata, "GET"),
        ("/models/{model_name}/versions/{model_version}", routes.metadata, "GET"),
        ("/models/{model_name}/versions/{model_version}/ready", routes.ready, "GET"),
        ("/models/{model_name}/config", routes.config, "GET"),
        ("/models/{model_name}/versions/{model_version}/config", routes.config, "GET"),
        ("/repository/index", routes.index, "POST"),
    ]:
        router.add_api_route(path, endpoint, methods=[method], response_model=None, include_in_schema=False)
    app.include_router(router)


def version_of(model: OnnxModel) -> str:
    """The version a Triton-style repository gave the model (``<name>/<version>/model.onnx``), else "1"."""
    return model.path.parent.name if model.path.parent.name.isdigit() else "1"


class _Routes:
    def __init__(self, dataplane):
        self.dataplane = dataplane

    def _model(self, name: str, version: str | None) -> OnnxModel:
        from kserve.errors import ModelNotFound

        from deploykit.serve.limits import shown

        model = self.dataplane.get_model_from_registry(name)
        if version is not None and version != version_of(model):
            raise ModelNotFound(f"{shown(name)} version {shown(version)}")
        return model

    async def infer(self, request: Request, model_name: str, model_version: str | None = None):
        from starlette.responses import Response

        self._model(model_name, model_version)
        body = await request.body()
        headers = dict(request.headers.items())  # linear; the connection layer caps the count anyway
        infer_request, _ = self.dataplane.decode(body, headers, "v2", model_name)
        response, response_headers = await self.dataplane.infer(model_name, infer_request, headers)
        if _values(response) > INLINE_VALUES:
            content, extra = await asyncio.to_thread(self._encode, model_name, response, headers)
        else:
            content, extra = self._encode(model_name, response, headers)
        response_headers.update(extra)
        for name in ("content-length", "content-type"):
            response_headers.pop(name, None)
        media = "application/octet-stream" if extra.get("inference-header-content-length") else _JSON
        return Response(content, media_type=media, headers=response_headers)

    def _encode(self, model_name: str, response, headers: dict) -> tuple[bytes, dict]:
        content, extra = self.dataplane.encode(model_name, response, headers, {})
        if not isinstance(content, bytes):
            content = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        return content, extra

    async def metadata(self, model_name: str, model_version: str | None = None):
        model = self._model(model_name, model_version)
        return {
            "name": model_name,
            "versions": [version_of(model)],
            "platform": PLATFORM,
            "inputs": model.get_input_types(),
            "outputs": model.get_output_types(),
            "parameters": model.metadata_parameters(),
        }

    async def ready(self, model_name: str, model_version: str):
        self._model(model_name, model_version)
        return {"name": model_name, "ready": True}

    async def config(self, model_name: str, model_version: str | None = None):
        return triton_config(self._model(model_name, model_version))

    async def index(self):
        models = self.dataplane.model_registry.get_models().values()
        return [{"name": m.name, "version": version_of(m), "state": "READY", "reason": ""} for m in models]


def triton_config(model: OnnxModel) -> dict:
    """The model's configuration as Triton's ``/config`` answers it (JSON of its ModelConfig).

    Batch-first outputs give ``max_batch_size`` = the server's ``--max-rows`` and dims without the batch
    axis; a model with ``sample_probabilities`` or ``member_probabilities`` ([T or K, N, classes], batch
    second) gets ``max_batch_size`` 0 and full dims (-1 for variable sizes), as Triton requires then.
    """
    outputs = model.outputs
    batched = not any(o.name in SAMPLE_FIRST_OUTPUTS for o in outputs)

    datatypes = {t["name"]: t["datatype"] for t in [*model.get_input_types(), *model.get_output_types()]}

    def tensor(arg) -> dict:
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape[1:] if batched else arg.shape)]
        entry = {"name": arg.name, "data_type": f"TYPE_{datatypes[arg.name]}", "dims": dims or [1]}
        return entry if dims else {**entry, "reshape": {"shape": []}}  # a scalar per row, as Triton writes it

    parameters = {
        k: {"string_value": v if isinstance(v, str) else orjson.dumps(v).decode()}
        for k, v in model.metadata_parameters().items()
    }
    return {
        "name": model.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": model.config.max_rows if batched else 0,
        "input": [tensor(model.input)],
        "output": [tensor(o) for o in outputs],
        "parameters": parameters,
    }


def _values(response) -> int:
    """Numbers in a response's outputs (an ``InferResponse``)."""
    outputs = getattr(response, "outputs", None) or []
    return sum(getattr(getattr(o, "data", None), "size", 0) or 0 for o in outputs)
