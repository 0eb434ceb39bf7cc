"""The floor: the same onnxruntime call behind the thinnest Starlette route that speaks V2 JSON.

``python -m benchmarks.floor --model FILE --name NAME --port PORT`` serves
``POST /v2/models/NAME/infer`` (and a ready probe) with uvicorn on httptools and uvloop, one
worker, no access log. No validation, no batching, no middleware, inference inline on the event
loop: what no real server should do, and so a bound on what any Python server can reach on this
machine with this client. The session options match phiserve's (:mod:`benchmarks.ort_options`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from benchmarks.ort_options import session_options

_V2 = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.bool_): "BOOL",
}
_NUMPY = {v: k for k, v in _V2.items()}


def build_app(model_file: Path, name: str) -> Starlette:
    """A Starlette app answering V2 JSON infer requests for one model."""
    session = ort.InferenceSession(
        str(model_file), sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    output_names = [o.name for o in session.get_outputs()]

    async def infer(request: Request) -> Response:
        doc = json.loads(await request.body())
        feeds = {
            i["name"]: np.asarray(i["data"], dtype=_NUMPY[i["datatype"]]).reshape(i["shape"])
            for i in doc["inputs"]
        }
        results = session.run(output_names, feeds)
        outputs = [
            {
                "name": n,
                "datatype": _V2[a.dtype],
                "shape": list(a.shape),
                "data": a.ravel().tolist(),
            }
            for n, a in zip(output_names, results, strict=True)
        ]
        body = json.dumps({"model_name": name, "outputs": outputs}, separators=(",", ":"))
        return Response(body, media_type="application/json")

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    return Starlette(
        routes=[
            Route(f"/v2/models/{name}/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", ready),
        ]
    )


def main() -> None:
    """Parse arguments and serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = build_app(args.model, args.name)
    # The model file lives in the benchmark's temp dir; the session holds what it needs.
    if os.environ.get("BENCH_FLOOR_UNLINK") == "1":
        args.model.unlink(missing_ok=True)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        workers=1,
    )


if __name__ == "__main__":
    main()
