"""HTTP routes, one module per area, each exposing `router` (an `APIRouter`).

`service.main` includes them; a new area (e.g. cheque amounts in `cheques.py`) is one module
here plus one `app.include_router(...)` line there. Routes only translate HTTP to and from the
model, the batcher and the sample store.
"""
