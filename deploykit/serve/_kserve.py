"""The one place deploykit imports kserve.

``kserve.model_server`` parses ``sys.argv`` with its own argparse parser when
it is imported; it must not see deploykit's command line (``--port`` could
match one of its abbreviations one day), so it is imported with an empty one.
"""

from __future__ import annotations

import sys

_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.errors import InvalidInput, ModelNotFound
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer
    from kserve.utils.numpy_codec import from_np_dtype
finally:
    sys.argv = _argv

__all__ = [
    "FASTAPI_APP_IMPORT_STRING",
    "DataPlane",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "InvalidInput",
    "Model",
    "ModelNotFound",
    "ModelRepositoryExtension",
    "ModelServer",
    "RESTServer",
    "from_np_dtype",
]
