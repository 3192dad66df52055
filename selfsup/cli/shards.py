"""Command line: pack an image folder into shards for streaming (data/shards.py).

    selfsup-shards --data_path /data/imagenet_folder --output /data/imagenet_shards [--chunk_bytes 64MB]
    selfsup-train --dataset_name shards --data_path /data/imagenet_shards ...

reads ``<data_path>/train/<class>/<image>`` and ``<data_path>/val`` (or holds out ``--holdout_fraction`` of every
class with ``--data_seed``, exactly as ``dataset_name="imagefolder"`` does) and writes ``<output>/train``,
``<output>/val`` and ``<output>/selfsup_shards.json``. ``--data_path`` may also be an ImageNet root (``--dataset_name
imagenet``: ``<data_path>/imagenet/{train,val}``).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, Optional, Sequence

from jsonargparse import ArgumentParser

from selfsup.cli.common import new_parser
from selfsup.data.shards import DEFAULT_CHUNK_BYTES, write_shards
from selfsup.data.sources import DataSourceOptions, folder_splits


def build_parser() -> ArgumentParser:
    parser = new_parser("selfsup-shards", __doc__)
    parser.add_argument("--data_path", required=True, help="the image folder (train/<class>/<image>, optional val/)")
    parser.add_argument("--output", required=True, help="folder to write the shards to")
    parser.add_argument("--dataset_name", default="imagefolder", choices=("imagefolder", "imagenet"))
    parser.add_argument("--holdout_fraction", type=float, default=0.1, help="held out per class when there is no val/")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the held-out split")
    parser.add_argument("--chunk_bytes", default=DEFAULT_CHUNK_BYTES, help="size of each chunk file")
    parser.add_argument("--num_workers", type=int, default=1, help="processes writing chunks")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Write the shards; returns their metadata."""
    config = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    source = DataSourceOptions(dataset_name=config.dataset_name, data_path=config.data_path,
                               holdout_fraction=config.holdout_fraction, data_seed=config.data_seed)
    metadata = write_shards(folder_splits(source), config.output, config.chunk_bytes, config.num_workers)
    print(json.dumps({k: v for k, v in metadata.items() if k != "classes"} | {"classes": len(metadata["classes"])}))
    return metadata


def run() -> None:
    """Console entry point (``selfsup-shards``)."""
    main()


if __name__ == "__main__":  # python -m selfsup.cli.shards, as the console script
    run()
