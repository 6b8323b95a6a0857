"""API docs without a CDN: the OpenAPI document at /api/v1/openapi.json and a page listing every operation
(/api/docs), both behind the login. FastAPI's Swagger UI and ReDoc load scripts from a CDN, which the
Content-Security-Policy forbids, so they are switched off (app.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from cermin.web.auth import Principal, principal
from cermin.web.render import render

router = APIRouter(include_in_schema=False)
METHODS = ("get", "post", "put", "patch", "delete")


@router.get("/api/v1/openapi.json", name="openapi")
def openapi_json(request: Request, p: Principal = Depends(principal)):
    return JSONResponse(request.app.openapi())


@router.get("/api/docs", name="api_docs")
def api_docs(request: Request, p: Principal = Depends(principal)):
    spec = request.app.openapi()
    ops = []
    for path, item in sorted(spec.get("paths", {}).items()):
        for method in METHODS:
            op = item.get(method)
            if op:
                params = [x.get("name", "") for x in op.get("parameters", [])]
                ops.append(
                    {
                        "method": method.upper(),
                        "path": path,
                        "summary": op.get("summary", ""),
                        "description": op.get("description", ""),
                        "params": params,
                    }
                )
    return render(request, "api_docs.html", {"ops": ops, "info": spec.get("info", {})})
