"""CUDA agrees with the CPU: the network, the blockwise pixel InfoNCE and the evaluation counts.

Marked ``gpu`` and skipped without a CUDA device; ``bench/gpu_check.py`` runs them
(``pytest -m gpu``). TF32 is switched off inside each test so that CUDA computes in float32.
"""

import pytest
import torch

from hqtd.adapt.contrastive import pixel_contrastive_loss
from hqtd.config import load_config
from hqtd.evaluate import evaluate_model
from hqtd.models.deeplabv2 import build_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def model(benchmark: str = "gta5") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_config([f"benchmark={benchmark}", "run_dir=unused"]).model).eval()


def test_resnet101_forward_on_cuda_matches_cpu():
    net = model()
    image = torch.rand(1, 3, 97, 129)
    with torch.no_grad():
        expected = net(image).main
        got = net.cuda()(image.cuda()).main.cpu()
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())


def test_pixel_infonce_on_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(0)
    strong, weak = (torch.randn(2, 19, 33, 65, generator=gen) for _ in range(2))
    leaves = [t.clone().requires_grad_() for t in (strong, weak, strong.cuda(), weak.cuda())]
    expected = pixel_contrastive_loss(leaves[0], leaves[1], 0.05)
    got = pixel_contrastive_loss(leaves[2], leaves[3], 0.05)
    (expected + got).backward()
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=0)
    for cpu, cuda in ((leaves[0], leaves[2]), (leaves[1], leaves[3])):
        scale = cpu.grad.abs().max().item()
        torch.testing.assert_close(cuda.grad.cpu(), cpu.grad, rtol=1e-4, atol=1e-4 * scale)


def test_evaluation_counts_on_cuda_match_cpu():
    net = model("mini_gta5")
    gen = torch.Generator().manual_seed(1)
    items = [
        {"image": torch.randint(0, 256, (3, 48, 96), dtype=torch.uint8, generator=gen),
         "label": torch.randint(0, 19, (96, 192), generator=gen)}
        for _ in range(3)
    ]  # fmt: skip
    expected = evaluate_model(net, items, 19).confusion.numpy()
    got = evaluate_model(net.cuda(), items, 19, device=torch.device("cuda")).confusion.numpy()
    # Near-ties may flip between kernels; nearly all pixels must agree.
    assert got.sum() == expected.sum()
    assert abs(got - expected).sum() <= 0.01 * expected.sum()
