"""The baseline: an NSFW classification API as a user would first write it.

FastAPI, the transformers pipeline loaded once at import, called per request inside ``async def``
(so it blocks the event loop while it runs), multipart upload, no limits, no batching across
requests. Run: ``NAIVE_MODEL=<model dir> uvicorn naive_app:app --app-dir bench``.
"""

from __future__ import annotations

import io
import os

from fastapi import FastAPI, File, UploadFile
from PIL import Image
from transformers import pipeline

classifier = pipeline("image-classification", model=os.environ["NAIVE_MODEL"], device="cpu")
app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/classify")
async def classify(files: list[UploadFile] = File(...)) -> dict[str, object]:
    images = [Image.open(io.BytesIO(await f.read())) for f in files]
    predictions = classifier(images, top_k=None)
    return {"results": [{p["label"]: p["score"] for p in pred} for pred in predictions]}
