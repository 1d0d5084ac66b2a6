"""Tiny networks, batches and the 'it learns' training loop shared by the method tests.

Imported as a sibling module (``from method_test_helpers import ...``): pytest puts this folder
on ``sys.path`` for its test files, and no other test folder has a module of this name.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from semisupseg.methods import Batch, Method, StepContext, StepOutput, build_method
from semisupseg.networks import build_network

TINY_WIDTHS = (4, 8, 16, 32, 64)


def tiny_unet(num_classes: int = 2, widths=TINY_WIDTHS) -> nn.Module:
    return build_network("unet3d", in_channels=1, num_classes=num_classes, widths=widths)


def small_vnet() -> nn.Module:
    """A V-Net with BatchNorm, the paper's network and the trainer's bf16 path's hardest case."""
    return build_network("vnet", in_channels=1, num_classes=2, n_filters=4, normalization="batch")


def random_batch(n_l=2, n_u=2, size=(32, 32, 16), seed=0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        x_l=torch.randn(n_l, 1, *size, generator=gen),
        y_l=(torch.rand(n_l, *size, generator=gen) > 0.7).long(),
        x_u=torch.randn(n_u, 1, *size, generator=gen),
    )


def bf16_cpu_step(method_name: str, options: dict) -> StepOutput:
    """One seeded training step of ``method_name`` on ``small_vnet`` (train mode, one labelled and
    one unlabelled patch) under CPU bf16 autocast: the dtype mix the trainer gives a GPU step."""
    torch.manual_seed(0)
    method = build_method(method_name, small_vnet, 2, options)
    method.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return method.training_step(random_batch(n_l=1, n_u=1), StepContext(10, 100, torch.bfloat16))


def sphere_volumes(n, gen, size=(32, 16, 16)):
    """n images (n, 1, *size): a bright ball (radius 3.5-5 voxels) in Gaussian noise, and its labels."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij"))
    images, labels = [], []
    for _ in range(n):
        centre = torch.tensor([10.0, 6.0, 6.0]) + torch.rand(3, generator=gen) * torch.tensor([12.0, 4.0, 4.0])
        radius = 3.5 + 1.5 * float(torch.rand(1, generator=gen))
        mask = ((grid - centre[:, None, None, None]) ** 2).sum(0) <= radius**2
        images.append(mask.float() + 0.4 * torch.randn(size, generator=gen))
        labels.append(mask.long())
    return torch.stack(images)[:, None], torch.stack(labels)


def ensemble_dice(method: Method, images, labels) -> float:
    """Foreground Dice of the argmax of the inference networks' mean softmax (eval mode)."""
    method.eval()
    with torch.no_grad():
        probs = torch.stack([net(images).softmax(1) for net in method.inference_networks()]).mean(0)
    method.train()
    pred = probs.argmax(1) == 1
    truth = labels == 1
    return 2.0 * float((pred & truth).sum()) / float(pred.sum() + truth.sum())


def sphere_dice_before_and_after_training(method_name: str, options: dict, iterations: int = 60) -> Tuple[float, float]:
    """Train ``method_name`` on ``tiny_unet`` with ``options`` and return its held-out sphere Dice
    ``(untrained, trained)``.

    4 labelled and 8 unlabelled sphere volumes; each of the ``iterations`` SGD steps (lr 0.05,
    momentum 0.9) sees one random labelled and one random unlabelled volume; 4 test volumes.
    Seeded: the same call gives the same numbers.
    """
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x_l, y_l = sphere_volumes(4, gen)
    x_u, _ = sphere_volumes(8, gen)
    x_test, y_test = sphere_volumes(4, gen)
    method = build_method(method_name, tiny_unet, 2, options)
    optimiser = torch.optim.SGD(method.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    untrained = ensemble_dice(method, x_test, y_test)
    for it in range(iterations):
        i, j = torch.randint(0, 4, (1,), generator=gen), torch.randint(0, 8, (1,), generator=gen)
        ctx = StepContext(it, iterations)
        out = method.training_step(Batch(x_l[i], y_l[i], x_u[j]), ctx)
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        method.after_optimizer_step(ctx)
    return untrained, ensemble_dice(method, x_test, y_test)
