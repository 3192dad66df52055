"""Command line: the embedding plots of a checkpoint's encoder.

    selfsup-embed --checkpoint runs/quickstart.ckpt [--method umap] [--split train] [--out_dir runs/embeddings]

writes ``<out_dir>/<name>_<method>.png`` (a t-SNE or UMAP map of the split's embeddings coloured by label, with a
legend) and ``<out_dir>/<name>_neighbours.png`` (query images and their nearest neighbours), for up to
``--max_images`` images of the checkpoint's dataset (its labelled splits, through the evaluation transform). Other
fields of the linear probe's params (``--data_path``, ``--batch_size``, ...) override the checkpoint's.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence, Sized, cast

import torch
from jsonargparse import ArgumentParser

from selfsup import data
from selfsup.cli.common import add_fields, given_fields, migrate_argv, new_parser
from selfsup.eval import visualize
from selfsup.eval.linear import LinearClassifierMethod, LinearClassifierMethodParams


def build_parser() -> ArgumentParser:
    parser = new_parser("selfsup-embed", __doc__)
    parser.add_argument("--checkpoint", required=True, help="SelfSupervisedMethod checkpoint")
    parser.add_argument("--method", default="tsne", choices=visualize.EMBEDDING_METHODS, help="2-D map")
    parser.add_argument("--split", default="test", choices=("train", "test"), help="which labelled split to embed")
    parser.add_argument("--max_images", type=int, default=visualize.MAX_POINTS, help="images embedded at most")
    parser.add_argument("--out_dir", default="runs/embeddings", help="folder for the PNG files")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where to encode")
    add_fields(parser, LinearClassifierMethodParams)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    """Write the plots; returns their paths."""
    parser = build_parser()
    config = parser.parse_args(migrate_argv(sys.argv[1:] if argv is None else argv, LinearClassifierMethodParams))
    probe = LinearClassifierMethod.from_moco_checkpoint(
        config.checkpoint, **given_fields(config, LinearClassifierMethodParams))
    device = torch.device(config.device)
    probe.model.to(device)
    dataset = probe.image_datasets()[0 if config.split == "train" else 1]
    info = data.dataset_info(probe.params)
    loader = data.make_loader(dataset, batch_size=probe.params.batch_size, shuffle=False, drop_last=False,
                              num_workers=probe.params.num_data_workers, pin_memory=probe.params.pin_data_memory)
    progress = data.loaders.with_progress(loader, len(cast(Sized, dataset)), "embedding")
    embedded = visualize.embed_batches(probe.model, progress,
                                       info.mean, info.std, device, config.max_images)
    name = f"{os.path.splitext(os.path.basename(config.checkpoint))[0]}_{config.split}"
    written = [path for path, _ in visualize.write_embedding_plots(
        embedded, config.out_dir, config.method, visualize.class_names_of(dataset), name)]
    print("\n".join(written))
    return written


def run() -> None:
    """Console entry point (``selfsup-embed``)."""
    main()


if __name__ == "__main__":  # python -m selfsup.cli.embed, as the console script
    run()
