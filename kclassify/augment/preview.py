"""`kclassify augment preview`: a grid of augmented training images with their (possibly
mixed) labels, produced by the recipe's own training pipeline, so a person sees what the
policy does before paying for a run (a flip that turns a 9 into a 6 hurts)."""
import numpy as np


def label_text(target, class_names):
    """'cat' for a hard label, 'cat .62 / dog .38' for a mixed or smoothed one."""
    order = np.argsort(-target)[:2]
    if target[order[0]] > 0.95:
        return class_names[order[0]]
    return " / ".join(f"{class_names[i]} {target[i]:.2f}" for i in order if target[i] > 0.02)


def preview(recipe, out, count=32, echo=print):
    from kclassify import runtime
    from kclassify.data import load_data
    from kclassify.data.pipeline import recipe_train_dataset
    from kclassify.plots import _pyplot

    runtime.setup(recipe.runtime)
    data = load_data(recipe.data, recipe.runtime.seed)
    recipe = recipe.model_copy(deep=True)
    recipe.train.batch_size = min(count, len(data.train))
    images, targets = next(iter(recipe_train_dataset(recipe, data.train, len(data.class_names))))[:2]
    images, targets = np.clip(images.numpy(), 0, 255).astype(np.uint8), targets.numpy()
    plt = _pyplot()
    cols = 8
    rows = int(np.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.8, rows * 2.0))
    for ax, image, target in zip(np.ravel(axes), images, targets):
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
        ax.set_title(label_text(target, data.class_names), fontsize=7)
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    echo(f"wrote {out}: {len(images)} augmented training images of recipe {recipe.name}")
