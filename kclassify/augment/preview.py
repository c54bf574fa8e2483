"""The augmentation preview's picture: a grid of augmented training images with their (possibly
mixed) labels, so a person sees what the policy does before paying for a run (a flip that turns a
9 into a 6 hurts). Rendering only: `kclassify.commands.augment` runs the recipe's own pipeline and hands
its batch here."""
import numpy as np

from kclassify.plots import _pyplot


def label_text(target, class_names):
    """'cat' for a hard label, 'cat .62 / dog .38' for a mixed or smoothed one."""
    order = np.argsort(-target)[:2]
    if target[order[0]] > 0.95:
        return class_names[order[0]]
    return " / ".join(f"{class_names[i]} {target[i]:.2f}" for i in order if target[i] > 0.02)


def write_grid(images, targets, class_names, out, cols=8):
    """Save uint8 images (N, H, W, C) with their target rows as a PNG grid to `out` (path or file)."""
    plt = _pyplot()
    rows = int(np.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.8, rows * 2.0))
    for ax, image, target in zip(np.ravel(axes), images, targets):
        gray = image.shape[-1] == 1
        ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None)
        ax.set_title(label_text(target, class_names), fontsize=7)
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
