"""How close quantized chat models stay to the unquantized one in a chat: 16 held-out user questions
(none of them among the calibration seeds) put through the model's chat template, each answered by
the unquantized model (the fp32 numpy reference, top-k 50 at temperature 0.7) to --length tokens;
then each artifact's perplexity on those conversations, run by edgekit's runtime in a child
process as bench/run.py runs it. The closer to the unquantized model's own perplexity on them, the
more of its chat behaviour the artifact keeps.

    python bench/chat_fidelity.py SOURCE ARTIFACT [ARTIFACT ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = (
    "What is the tallest mountain in the world?",
    "How does photosynthesis work?",
    "Write a haiku about winter.",
    "What are the benefits of regular exercise?",
    "Explain what a black hole is.",
    "How can I improve my sleep?",
    "Who wrote Romeo and Juliet?",
    "Describe a healthy breakfast.",
    "What is machine learning?",
    "How do vaccines work?",
    "Give me a recipe for pancakes.",
    "Why is the ocean salty?",
    "What is the difference between weather and climate?",
    "How do I make a paper airplane?",
    "What is the Pythagorean theorem?",
    "Tell me a fun fact about octopuses.",
)
HERE = Path(__file__).parent


def conversations(source: str, length: int) -> list[list[int]]:
    from edgekit.generation.tokenizer import TextTokenizer
    from edgekit.quant.calibration import sample_continuations
    from edgekit.reference import ReferenceModel
    from edgekit.sources import open_checkpoint

    checkpoint = open_checkpoint(source)
    tokenizer = TextTokenizer(checkpoint.tokenizer)
    starts = [tokenizer.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]
    model = ReferenceModel.from_checkpoint(checkpoint)
    return sample_continuations(model, starts, length, seed=123, temperature=0.7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="the unquantized checkpoint (HF folder or GGUF)")
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("-o", "--output", type=Path, default=HERE / "results" / "chat_fidelity.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        windows = Path(work) / "conversations.json"
        windows.write_text(json.dumps(conversations(args.source, args.length)))
        for artifact in args.artifacts:
            command = [sys.executable, str(HERE / "child.py"), "perplexity", "edgekit", str(artifact), str(windows)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            rows.append({"artifact": str(artifact), **result})
            print(f"{artifact}: perplexity {result['perplexity']:.3f} over {result['tokens']} tokens", flush=True)
    args.output.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
