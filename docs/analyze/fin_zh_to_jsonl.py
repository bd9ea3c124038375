"""FinNSP and FinESE evaluation files (JSON lists, ../shared/data/fin/zh) as one JSON-lines file of
documents for `nanonlp analyze`: id, source, text, entities (';'-separated companies).

    python docs/analyze/fin_zh_to_jsonl.py ../shared/data/fin/zh analysis/fin_zh.jsonl
"""

import json
import sys
from pathlib import Path

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
out.parent.mkdir(parents=True, exist_ok=True)
with open(out, "w", encoding="utf-8") as f:
    for i, title, text, entities, _negative, _negative_entities in json.loads((folder / "finnsp_eval.json").read_text(encoding="utf-8")):
        entities = ";".join(e for e in entities.split(";") if e.strip() and e != "NaN")  # FinNSP writes NaN for none
        body = text if not title or title in text else f"{title}。{text}"
        f.write(json.dumps({"id": f"finnsp-{i}", "source": "FinNSP", "text": body, "entities": entities}, ensure_ascii=False) + "\n")
    for i, text, _event_type, subject in json.loads((folder / "finese_eval.json").read_text(encoding="utf-8")):
        subject = "" if subject in ("NaN", "nan") else subject  # no subject company
        f.write(json.dumps({"id": f"finese-{i}", "source": "FinESE", "text": text, "entities": subject}, ensure_ascii=False) + "\n")
