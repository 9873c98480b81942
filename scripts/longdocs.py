"""Write local long documents for `mambaspec bench longbench --data` (no hub needed).

Each line is {"_id", "context", "input"}: the source of a long Python standard-library module
(shipped with the interpreter) and a question about it. Usage:

    python scripts/longdocs.py runs/longdocs.jsonl
    mambaspec bench longbench --data runs/longdocs.jsonl --lengths 1k,2k,4k,8k --limit 2
"""

import json
import sys
import sysconfig
from pathlib import Path

MODULES = {  # module file -> question (every file is longer than 8k SmolLM2 tokens)
    "argparse.py": "What does the parse_known_args method return?",
    "typing.py": "What is the purpose of the TypeVar class?",
    "threading.py": "How does the Condition.wait method behave on timeout?",
    "tarfile.py": "Which compression methods can the open function handle?",
}


def main(out: str) -> None:
    lib = Path(sysconfig.get_paths()["stdlib"])
    with open(out, "w") as f:
        for name, question in MODULES.items():
            f.write(json.dumps({"_id": name, "context": (lib / name).read_text(), "input": question}) + "\n")
    print(f"wrote {len(MODULES)} documents to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/longdocs.jsonl")
