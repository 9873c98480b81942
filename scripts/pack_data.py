"""Pack the shards of a distillation data set made on this machine since its last committed pack (or, before it
has a plan, the Magpie turns made so far), so that the next machine restores them instead of making them again
(``mambaspec/training/datapack.py``). Commit what it writes (``git add`` of the folder also stages a removed file):

    python scripts/pack_data.py broad-v1 && git add recipes/data/packs/broad-v1 && git commit -m "..."

``labels`` instead of a data set's name packs the target's labels of text (``labels: target`` sources,
``mambaspec/training/relabel.py``) cached on this machine into ``recipes/data/packs/labels/``.
"""

import argparse
import sys

from mambaspec.errors import MambaspecError
from mambaspec.training.data_recipe import DataRecipe
from mambaspec.training.datapack import write_pack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="data set (recipes/data/NAME.yaml), e.g. broad-v1, or `labels`")
    args = parser.parse_args()
    if args.name == "labels":
        from mambaspec.config import cache_dir
        from mambaspec.training.relabel import pack_labels

        folders = sorted(p for p in (cache_dir() / "labels").glob("*") if p.is_dir())
        if not any([pack_labels(f) for f in folders]):
            print(f"no new labels to pack in {cache_dir() / 'labels'}")
        return 0
    try:
        recipe = DataRecipe.named(args.name)
        if write_pack(recipe.folder, recipe.packs, recipe.settings_key()) is None:
            print(f"nothing new to pack in {recipe.folder}")
    except MambaspecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
