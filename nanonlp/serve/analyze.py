"""`POST /v1/analyze`: a batch of documents in; per document its sentiment, entities, events and
repost mark, and the alerts the batch raises against the stored history (DuckDB), out.

    nanonlp serve RUN... --analyze-config analyze.yaml [--analyze-store history.duckdb]

The analysis config names its own runs (sentiment, entities, events), loaded once when the server
starts. Requests are analysed one at a time on a worker thread (the history is one DuckDB file).
"""

import asyncio
import threading
from datetime import datetime

from nanonlp.errors import NanoNLPError


class AnalysisService:
    """The models and the history behind /v1/analyze; thread-safe through one lock."""

    def __init__(self, config, store_path, device: str = "cpu", models: dict | None = None):
        from nanonlp.analyze.documents import Annotator
        from nanonlp.analyze.store import Store

        self.config, self.store_path = config, store_path
        self.annotator = Annotator(config, models, device)
        self.history = Store(store_path)
        self.lock = threading.Lock()

    def analyze(self, items: list[dict]) -> dict:
        from nanonlp.analyze.inputs import Document, parse_time
        from nanonlp.analyze.pipeline import analyze_batch

        documents = []
        for number, item in enumerate(items, 1):
            try:
                moment = parse_time(item.get("time"))
            except ValueError as err:
                raise NanoNLPError(f"document {number}: {err}.") from None
            stamp = datetime.now().strftime("%Y%m%d%H%M%S%f")
            documents.append(Document(id=item.get("id") or f"api:{stamp}:{number}", text=item["text"], time=moment,
                                      source=item.get("source"), entities=list(dict.fromkeys(item.get("entities") or [])),
                                      file="api", line=number))
        with self.lock:
            records, alerts = analyze_batch(documents, self.annotator, self.history, self.config)
        for r in records:
            r.pop("file"), r.pop("line")
        return {"results": records, "alerts": alerts}

    def close(self) -> None:
        with self.lock:
            self.history.close()


def router(service: AnalysisService, check_key, max_documents: int):
    from fastapi import APIRouter, Depends
    from pydantic import BaseModel, ConfigDict, Field

    class Item(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str
        time: str | float | None = None
        id: str | None = None
        source: str | None = None
        entities: list[str] = Field(default_factory=list)

    class AnalyzeRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        documents: list[Item] = Field(..., min_length=1, max_length=max_documents)

    api = APIRouter()

    @api.post("/v1/analyze", dependencies=[Depends(check_key)])
    async def analyze(body: AnalyzeRequest) -> dict:
        return await asyncio.to_thread(service.analyze, [item.model_dump() for item in body.documents])

    return api
