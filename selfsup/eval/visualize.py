"""Pictures of a representation: a 2-D map of embeddings coloured by label (t-SNE, or UMAP with umap-learn
installed), a nearest-neighbour retrieval grid (each query image next to its top-k neighbours by cosine), and the
probe accuracy per epoch. They are written as PNG files and, where the logger shows images (TensorBoard, W&B), logged
as images; :class:`EmbeddingPlots` does both during pretraining, ``selfsup-embed`` for a checkpoint.

Needs matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor, nn

from selfsup.data.files import UNLABELED

EMBEDDING_METHODS = ("tsne", "umap")
MAX_POINTS = 2000  # embeddings mapped to 2-D (t-SNE costs O(N log N) per iteration)
GRID_QUERIES, GRID_NEIGHBOURS = 6, 8
PICTURE_IMAGES = 8  # validation images in a method's picture (MAE's reconstructions)
PROBE_METRICS = ("valid_knn_acc", "valid_class_acc")
Embedded = Tuple[Tensor, Tensor, Tensor]  # (features [N, D], labels [N], images [N, 3, H, W] in [0, 1])


def plotting_available() -> bool:
    """Whether matplotlib (the ``plot`` extra) is installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # drawn by the Agg canvas: no GUI backend, no pyplot state

    return Figure(figsize=(width, height), layout="tight")


@torch.no_grad()
def embed_batches(encoder: nn.Module, batches: Any, mean: Sequence[float], std: Sequence[float],
                  device: torch.device, limit: int = MAX_POINTS) -> Embedded:
    """Encoder features of the first ``limit`` images of ``batches`` (pairs of normalized images [B, 3, H, W] and
    labels [B]), with the images back in [0, 1] for display. The encoder runs in eval mode and is left as it was."""
    was_training = encoder.training
    encoder.eval()
    features, labels, images = [], [], []
    count = 0
    try:
        for x, y in batches:
            x = x[: limit - count]
            features.append(encoder(x.to(device)).float().cpu())
            labels.append(y[: len(x)].cpu())
            images.append(x.cpu())
            count += len(x)
            if count >= limit:
                break
    finally:
        encoder.train(was_training)
    shape = (1, 3, 1, 1)
    pixels = torch.cat(images) * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)
    return torch.cat(features), torch.cat(labels), pixels.clamp(0, 1)


def map_2d(features: Tensor, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """[N, 2] coordinates of the L2-normalized features (cosine geometry, as the kNN probe): t-SNE (scikit-learn)
    or UMAP (umap-learn)."""
    x = F.normalize(features.double(), dim=1).numpy()
    if method == "umap":
        try:
            import umap
        except ImportError as error:
            raise ImportError("embedding_plot='umap' needs umap-learn: pip install umap-learn") from error
        return np.asarray(umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(x))
    if method != "tsne":
        raise ValueError(f"method: got {method!r}; expected one of {EMBEDDING_METHODS}")
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return np.asarray(TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x))


def _name(label: int, class_names: Optional[Sequence[str]]) -> str:
    if label == UNLABELED:
        return "unlabeled"
    return class_names[label] if class_names is not None and label < len(class_names) else str(label)


def embedding_figure(points: np.ndarray, labels: Tensor, class_names: Optional[Sequence[str]], title: str) -> Any:
    """A scatter plot of ``points`` [N, 2], one colour per label and a legend naming the classes."""
    figure = _figure(7.5, 6)
    axis = figure.subplots()
    values = labels.numpy()
    classes = sorted(set(values.tolist()))
    palette = "tab10" if len(classes) <= 10 else "tab20"
    from matplotlib import colormaps

    colours = colormaps[palette]
    for index, label in enumerate(classes):
        chosen = values == label
        colour = "lightgrey" if label == UNLABELED else colours(index % colours.N)
        axis.scatter(points[chosen, 0], points[chosen, 1], s=6, color=colour, label=_name(label, class_names))
    axis.set_title(title)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), title="label")
    return figure


def nearest_neighbours(features: Tensor, queries: Tensor, k: int) -> Tensor:
    """Indices [Q, k] of the k most cosine-similar features to each query index, the query itself excluded."""
    normalized = F.normalize(features.float(), dim=1)
    similarity = normalized[queries] @ normalized.T
    similarity[torch.arange(len(queries)), queries] = -float("inf")
    return similarity.topk(min(k, len(features) - 1), dim=1).indices


def retrieval_figure(embedded: Embedded, class_names: Optional[Sequence[str]], title: str,
                     queries: int = GRID_QUERIES, k: int = GRID_NEIGHBOURS, seed: int = 0) -> Any:
    """Rows of a query image followed by its k nearest neighbours; a neighbour's frame is green when it has the
    query's label and red when not."""
    features, labels, images = embedded
    chosen = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:queries]
    neighbours = nearest_neighbours(features, chosen, k)
    figure = _figure(1.2 * (neighbours.shape[1] + 1), 1.3 * len(chosen) + 0.4)
    axes = figure.subplots(len(chosen), neighbours.shape[1] + 1, squeeze=False)
    for row, query in enumerate(chosen.tolist()):
        for column, index in enumerate([query, *neighbours[row].tolist()]):
            axis = axes[row, column]
            axis.imshow(images[index].permute(1, 2, 0).numpy())
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(_name(int(labels[index]), class_names), fontsize=7)
            colour = "black" if column == 0 else ("green" if labels[index] == labels[query] else "red")
            for spine in axis.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(2.5 if column else 1.0)
    figure.suptitle(title, fontsize=9)
    return figure


def pictures_figure(pictures: Dict[str, Tensor], mean: Sequence[float], std: Sequence[float], title: str) -> Any:
    """One row per named batch of ``pictures`` (normalized images [B, 3, H, W]), one column per image."""
    rows = list(pictures.items())
    columns = rows[0][1].shape[0]
    figure = _figure(1.2 * columns + 0.8, 1.25 * len(rows) + 0.4)
    axes = figure.subplots(len(rows), columns, squeeze=False)
    shape = (1, 3, 1, 1)
    for row, (name, batch) in enumerate(rows):
        pixels = (batch.float().cpu() * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)).clamp(0, 1)
        for column in range(columns):
            axis = axes[row, column]
            axis.imshow(pixels[column].permute(1, 2, 0).numpy())
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=8)
    figure.suptitle(title, fontsize=9)
    return figure


def accuracy_figure(history: Dict[str, List[Tuple[int, float]]], baseline: Optional[Dict[str, float]] = None) -> Any:
    """Probe accuracy (percent) per epoch, one line per metric; ``baseline``: the same metrics of the untrained
    encoder, drawn as dashed lines of the same colours."""
    figure = _figure(6, 4)
    axis = figure.subplots()
    for name, values in history.items():
        if values:
            line, = axis.plot([e for e, _ in values], [v for _, v in values], marker="o", label=name)
            if baseline and name in baseline:
                axis.axhline(baseline[name], color=line.get_color(), linestyle="--", linewidth=1,
                             label=f"{name}, random encoder")
    axis.set_xlabel("epoch")
    axis.set_ylabel("accuracy (%)")
    axis.set_title("validation probes")
    axis.grid(alpha=0.3)
    axis.legend()
    return figure


def log_figure(logger: Any, tag: str, figure: Any, step: int, path: str) -> None:
    """Show ``figure`` in the logger where it can show images: TensorBoard's add_figure, W&B's log_image."""
    add_figure = getattr(getattr(logger, "experiment", None), "add_figure", None)
    log_image = getattr(logger, "log_image", None)
    if callable(add_figure):
        add_figure(tag, figure, global_step=step)
    elif callable(log_image):
        log_image(key=tag, images=[path], step=step)


def write_embedding_plots(embedded: Embedded, out_dir: str, method: str, class_names: Optional[Sequence[str]],
                          name: str, seed: int = 0) -> Tuple[Tuple[str, Any], Tuple[str, Any]]:
    """The 2-D map and the retrieval grid of ``embedded``, saved as ``<out_dir>/<name>_<method>.png`` and
    ``<out_dir>/<name>_neighbours.png``; returns (path, figure) of each."""
    os.makedirs(out_dir, exist_ok=True)
    features, labels, _ = embedded
    title = f"{name}: {method} of {len(features)} embeddings"
    scatter = embedding_figure(map_2d(features, method, seed), labels, class_names, title)
    grid = retrieval_figure(embedded, class_names, f"{name}: query (left) and its {GRID_NEIGHBOURS} nearest "
                                                   "neighbours by cosine; green = same label", seed=seed)
    saved = []
    for suffix, figure in ((method, scatter), ("neighbours", grid)):
        path = os.path.join(out_dir, f"{name}_{suffix}.png")
        figure.savefig(path, dpi=110)
        saved.append((path, figure))
    return saved[0], saved[1]


def class_names_of(dataset: Any) -> Optional[List[str]]:
    """The class names of a dataset that declares them (torchvision datasets, image folders, synthetic shapes)."""
    names = getattr(dataset, "classes", None)
    return list(names) if names else None


def probe_metrics(trainer: pl.Trainer) -> Dict[str, float]:
    """The validation probes the module logged last (PROBE_METRICS), as floats."""
    return {name: float(trainer.callback_metrics[name]) for name in PROBE_METRICS if name in trainer.callback_metrics}


def validating_untrained(trainer: pl.Trainer) -> bool:
    """Whether this validation is ``trainer.validate`` before any optimizer step: of the untrained encoder."""
    return trainer.state.fn != TrainerFn.FITTING and trainer.global_step == 0


class EmbeddingPlots(pl.Callback):
    """During pretraining: the probe accuracies of every validation epoch (plotted as ``probe_accuracy.png``), and
    the 2-D map and retrieval grid of the validation embeddings (up to MAX_POINTS images) at the end of training and
    every ``every_n_epochs`` epochs (0: the end only), into ``out_dir`` and the logger. Rank zero only.

    ``mean``, ``std``: the normalization of the validation images, undone for display."""

    def __init__(self, out_dir: str, mean: Sequence[float], std: Sequence[float], method: str = "tsne",
                 every_n_epochs: int = 0) -> None:
        if method not in EMBEDDING_METHODS:
            raise ValueError(f"method: got {method!r}; expected one of {EMBEDDING_METHODS}")
        self.out_dir, self.mean, self.std = out_dir, tuple(mean), tuple(std)
        self.method, self.every_n_epochs = method, every_n_epochs
        self.history: Dict[str, List[Tuple[int, float]]] = {name: [] for name in PROBE_METRICS}
        self.baseline: Dict[str, float] = {}
        self.written: List[str] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the module's on_validation_epoch_end, which logs the probes
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        probed = probe_metrics(trainer)
        if trainer.state.fn != TrainerFn.FITTING:
            if validating_untrained(trainer):
                self.baseline = probed
            return
        for name, value in probed.items():
            self.history[name].append((trainer.current_epoch, value))
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs and epoch % self.every_n_epochs == 0 and epoch < (trainer.max_epochs or 0):
            self._plot(trainer, pl_module, f"epoch{epoch:03d}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._plot(trainer, pl_module, "final")
        if any(self.history.values()):
            path = os.path.join(self.out_dir, "probe_accuracy.png")
            figure = accuracy_figure(self.history, self.baseline)
            figure.savefig(path, dpi=110)
            self.written.append(path)
            for logger in trainer.loggers:
                log_figure(logger, "probe_accuracy", figure, trainer.global_step, path)

    def _plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str) -> None:
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        encoder = getattr(pl_module, "model", None)
        if loader is None or encoder is None or len(loader.dataset) < 3:
            return
        embedded = embed_batches(encoder, loader, self.mean, self.std, pl_module.device)
        saved = list(write_embedding_plots(embedded, self.out_dir, self.method, class_names_of(loader.dataset), name))
        step = getattr(pl_module, "step", None)
        if step is not None:
            saved.extend(self._pictures(step, encoder, loader, pl_module.device, name))
        for path, figure in saved:
            self.written.append(path)
            for logger in trainer.loggers:
                log_figure(logger, os.path.splitext(os.path.basename(path))[0], figure, trainer.global_step, path)

    def _pictures(self, step: Any, encoder: nn.Module, loader: Any, device: torch.device,
                  name: str) -> List[Tuple[str, Any]]:
        """The method's picture of the first PICTURE_IMAGES validation images (in eval mode), if it draws one."""
        images = next(iter(loader))[0][:PICTURE_IMAGES].to(device)
        was_training = encoder.training, step.training
        encoder.eval(), step.eval()
        try:
            with torch.no_grad():
                pictures = step.pictures(encoder, images)
        finally:
            encoder.train(was_training[0]), step.train(was_training[1])
        if not pictures:
            return []
        path = os.path.join(self.out_dir, f"{name}_{list(pictures)[-1]}.png")  # e.g. final_reconstruction.png
        figure = pictures_figure(pictures, self.mean, self.std, f"{name}: {', '.join(pictures)} of "
                                                                 f"{len(images)} validation images")
        figure.savefig(path, dpi=110)
        return [(path, figure)]
