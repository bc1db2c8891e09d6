"""Linear baseline for the built-in ``shapes`` dataset.

Multinomial logistic regression on raw pixels (standardised per pixel with train statistics,
small L2 penalty, full-batch L-BFGS). The dataset is meant to defeat linear templates through
position, rotation and colour-polarity variation, so this should stay far below what a small
conv net reaches; the script prints both the generation speed and the test accuracy.

    python benchmarks/shapes_linear_baseline.py [--seed 0] [--n-train 20000] [--image-size 32]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from tdsnn.data.shapes import DEFAULT_SIZES, SHAPE_CLASSES, generate_shapes


def linear_baseline_accuracy(
    seed: int = 0,
    n_train: int = DEFAULT_SIZES["train"],
    image_size: int = 32,
    *,
    n_test: int = DEFAULT_SIZES["test"],
    l2: float = 1e-2,
    max_iter: int = 50,
    verbose: bool = False,
) -> float:
    """Test accuracy (fraction in [0, 1]) of logistic regression on ``shapes`` pixels.

    Args:
        seed: dataset seed (also seeds nothing else: L-BFGS from zeros is deterministic).
        n_train: training images (the first ``n_train`` of the train split).
        image_size: image side in pixels.
        n_test: test images (the first ``n_test`` of the test split).
        l2: L2 penalty on the weights (mean over weights, added to the mean cross-entropy).
        max_iter: L-BFGS iterations.
        verbose: print generation speed and timings.
    """
    t0 = time.perf_counter()
    x_train, y_train = generate_shapes(n_train, split="train", seed=seed, image_size=image_size)
    x_test, y_test = generate_shapes(n_test, split="test", seed=seed, image_size=image_size)
    t_gen = time.perf_counter() - t0
    x_train = x_train.flatten(1).float().div_(255.0)  # [N, 3*H*W]
    x_test = x_test.flatten(1).float().div_(255.0)
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-3)
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std

    k = len(SHAPE_CLASSES)
    weight = torch.zeros(x_train.shape[1], k)
    bias = torch.zeros(k)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )
    # Loss and gradient by hand: autograd's X^T @ G on a transposed view is ~4x slower than a
    # matmul with a contiguous copy of X^T, and this fit is memory-bound.
    x_train_t = x_train.t().contiguous()  # [3*H*W, N]
    onehot = F.one_hot(y_train, k).float()  # [N, k]

    def closure() -> torch.Tensor:
        logits = x_train @ weight + bias  # [N, k]
        loss = F.cross_entropy(logits, y_train) + l2 * weight.pow(2).sum()
        g = (logits.softmax(1) - onehot) / x_train.shape[0]  # d loss / d logits
        weight.grad = x_train_t @ g + 2 * l2 * weight
        bias.grad = g.sum(0)
        return loss

    t1 = time.perf_counter()
    opt.step(closure)
    t_fit = time.perf_counter() - t1
    with torch.no_grad():
        train_acc = ((x_train @ weight + bias).argmax(1) == y_train).float().mean().item()
        test_acc = ((x_test @ weight + bias).argmax(1) == y_test).float().mean().item()
    if verbose:
        n = n_train + n_test
        threads = torch.get_num_threads()
        print(
            f"generated {n} images of {image_size}x{image_size} in {t_gen:.2f} s "
            f"({n / t_gen:,.0f} images/s, {threads} threads)"
        )
        print(f"L-BFGS fit: {t_fit:.1f} s; train accuracy {train_acc:.3f}")
        print(f"linear baseline test accuracy: {test_acc:.3f} (chance {1 / k:.3f})")
    return test_acc


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=DEFAULT_SIZES["train"])
    parser.add_argument("--n-test", type=int, default=DEFAULT_SIZES["test"])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--max-iter", type=int, default=50)
    args = parser.parse_args(argv)
    return linear_baseline_accuracy(
        seed=args.seed,
        n_train=args.n_train,
        image_size=args.image_size,
        n_test=args.n_test,
        max_iter=args.max_iter,
        verbose=True,
    )


if __name__ == "__main__":
    main()
