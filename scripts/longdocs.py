"""Write the held-out long-document set for `mambaspec bench longbench --data` (no hub needed).

Reads recipes/eval/longdocs.yaml (groups of Python's own reference documentation, pydoc_data.topics,
which ships with every Python) and writes one {"_id", "context", "input"} line per document:

    python scripts/longdocs.py                        # -> recipes/eval/longdocs.jsonl.gz (committed)
    mambaspec bench longbench --data recipes/eval/longdocs.jsonl.gz --lengths 1k,2k,4k,8k
"""

import gzip
import json
import sys
from pathlib import Path

import pydoc_data.topics
import yaml

ROOT = Path(__file__).resolve().parent.parent


def main(out: str) -> None:
    spec = yaml.safe_load((ROOT / "recipes" / "eval" / "longdocs.yaml").read_text())
    with gzip.open(out, "wt", encoding="utf-8") as f:
        for doc in spec["documents"]:
            text = "\n\n".join(pydoc_data.topics.topics[t].strip() for t in doc["topics"])
            f.write(json.dumps({"_id": doc["id"], "context": text, "input": doc["question"]}) + "\n")
    print(f"wrote {len(spec['documents'])} documents to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "recipes" / "eval" / "longdocs.jsonl.gz"))
