"""Chest X-ray (demonstration): a small PyTorch CNN exported with torch.onnx.export (dynamo).

There is no imaging data in this repository, so the weights are seeded random demonstration
weights: the model exercises the GPU path and large request payloads, and predicts nothing.
To adapt it, load your trained state_dict in place of the seeded init and replace the parity
images with real (de-identified) ones. Nothing is written to disk: the ONNX bytes stay in memory.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F  # noqa: N812 (PyTorch's conventional alias)
from torch import nn

from phiserve.export import TARGET_OPSET, ExportedModel, build_card, check_parity
from phiserve.monitoring import reference_block

NAME = "chest-xray"
CLASSES = ("normal", "pneumonia", "other")  # demonstration labels only
PARITY_SAMPLES = 100  # the minimum check_parity accepts; keeps the export quick on CPU


class SmallCNN(nn.Module):
    """Six stride-2 conv blocks (224 -> 4 pixels), global average pooling, a linear head."""

    def __init__(self, n_classes: int = len(CLASSES)) -> None:
        super().__init__()
        widths = [1, 16, 32, 64, 128, 256, 256]
        blocks: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
            # He init keeps the activation scale through six layers; PyTorch's default init
            # shrinks it until every output is the head's bias and parity would test nothing.
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            blocks += [conv, nn.BatchNorm2d(c_out), nn.ReLU()]  # the exporter folds the norm
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(widths[-1], n_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits [N, classes] for images [N, 1, 224, 224] scaled to [0, 1]."""
        return self.head(self.features(image))


def export(seed: int = 0) -> ExportedModel:
    """Build the seeded demonstration model, export it with a dynamic batch axis, check parity."""
    with torch.random.fork_rng():  # seed locally: leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = SmallCNN().eval()
        # Synthetic images (no imaging data here): smooth random fields at random contrast,
        # varied enough that the logits differ from image to image.
        coarse = torch.rand(PARITY_SAMPLES, 1, 7, 7)
        images = F.interpolate(coarse, size=(224, 224), mode="bilinear")
        images = images * torch.rand(PARITY_SAMPLES, 1, 1, 1)

    program = torch.onnx.export(
        model,
        (images[:2],),  # batch of 2, not 1: a size-1 dim would be specialised, not symbolic
        dynamo=True,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=TARGET_OPSET,
        verbose=False,
    )
    onnx_bytes = program.model_proto.SerializeToString()

    with torch.no_grad():
        expected = model(images).numpy()
    parity = check_parity(
        NAME, onnx_bytes, {"image": images.numpy()}, {"logits": expected}, atol=1e-5, rtol=1e-4
    )
    metrics = {
        "evaluation_data": "none: demonstration weights, there is no imaging data to evaluate on",
        "summary": {},
        "performance_metrics": [],
    }
    card = build_card(
        name=NAME,
        overview=(
            "DEMONSTRATION WEIGHTS, NOT FOR DIAGNOSIS. A small CNN with seeded random weights, "
            f"shaped like a chest X-ray classifier over demonstration labels {', '.join(CLASSES)}."
        ),
        owners=[
            {"name": "Example owner (replace with your team)", "contact": "ml-owners@example.org"}
        ],
        licence="Apache-2.0",
        references=["https://pytorch.org/docs/stable/onnx_dynamo.html"],
        architecture=(
            f"6 x (3x3 stride-2 conv, batch norm, ReLU), widths 16-256, global average pooling, "
            f"linear head; {sum(p.numel() for p in model.parameters()):,} parameters, PyTorch."
        ),
        training_data=f"None. Demonstration weights: seeded random initialisation (seed {seed}).",
        evaluation_data="None: the model has not been evaluated and has no clinical performance.",
        input_format="One grayscale image per row, 224 x 224, float32 scaled to [0, 1].",
        output_format=(
            f"Logits float32 [N, {len(CLASSES)}] over the demonstration labels "
            f"{list(CLASSES)}; softmax gives probabilities. They carry no clinical meaning."
        ),
        onnx_bytes=onnx_bytes,
        intended_use=(
            "Demonstration weights, not for diagnosis or any clinical use. Intended use: "
            "exercising the GPU execution path and large request payloads (200 KB per image) "
            "in tests, benchmarks and load tests."
        ),
        users=["Engineers testing and load-testing a phiserve deployment."],
        use_cases=["GPU serving checks, batching and payload-size tests, latency benchmarks."],
        limitations=[
            "Demonstration weights: its outputs are meaningless and must never inform care.",
            "Parity was checked on synthetic smooth random images, not radiographs.",
        ],
        risks={
            "Someone mistakes the demonstration model for a diagnostic one.": (
                "The card says so in its overview, intended use and outputs; replace the "
                "weights with a trained, validated model before serving any real image."
            ),
            "Real images sent to a test deployment are PHI.": (
                "Use synthetic images for load tests; the platform encrypts models and audits "
                "requests, but test environments should still receive no PHI."
            ),
        },
    )
    # Drift reference: per-image statistics of the parity images and the "pneumonia" softmax.
    monitoring = reference_block(
        images.numpy(),
        expected,
        input_name="image",
        score_output_name="logits",
        score_column=CLASSES.index("pneumonia"),
        score_transform="softmax",
    )
    return ExportedModel(
        NAME,
        onnx_bytes,
        parity,
        metrics,
        card,
        {"max_batch_size": 32},
        extensions={"monitoring": monitoring},
    )
