"""What constrained decoding costs and what it buys, on an exported SmolLM2 artifact.

1. Cost per token: a decode step (runtime.decode) next to the mask work of one constrained token
   (llguidance computes the allowed set, numpy applies it to the logits, the grammar advances),
   replayed over the tokens of real constrained answers; and whole answers' tokens/s with and
   without a constraint, in alternating rounds.
2. Validity: how often SmolLM2's answer parses and validates, for a few schemas and prompts, when
   the prompt asks for JSON (unconstrained) and when the schema constrains it.

    python bench/structured.py out/smollm2-135m-cpu [--rounds 3] [--samples 2]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import edgekit


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(max_length=30)
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    people: list[Annotated[str, Field(max_length=20)]] = Field(max_length=4)


class Sentiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Literal["positive", "negative", "neutral"]
    confidence: float = Field(ge=0, le=1, multiple_of=0.01)  # unbounded, a 135M model writes 1.0000… forever


class Product(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=30)
    price: float = Field(ge=0)
    in_stock: bool
    tags: list[Annotated[str, Field(max_length=15)]] = Field(max_length=3)


CASES = {
    "event": (
        Event,
        [
            "Lunch with Priya and Tom on 2025-03-14 at Café Luna.",
            "The board meeting is on 2025-09-01; Ana, Raj and Kim attend.",
            "Dentist appointment 2025-06-02, just me.",
        ],
    ),
    "sentiment": (
        Sentiment,
        [
            "I love this phone, the battery lasts forever!",
            "The delivery was late and the box was broken.",
            "It is a chair.",
        ],
    ),
    "product": (
        Product,
        [
            "The Aero kettle costs 39.90 and ships today; it is steel and quiet.",
            "Sold out: the Luma desk lamp, 24.50, LED.",
            "Trail shoes, 89 dollars, waterproof, in stock.",
        ],
    ),
}


def _messages(model: type[BaseModel], text: str) -> list[dict[str, str]]:
    schema = json.dumps(model.model_json_schema())
    return [
        {"role": "system", "content": f"Answer with only a JSON object that matches this JSON schema: {schema}"},
        {"role": "user", "content": text},
    ]


def _valid(model: type[BaseModel], text: str) -> bool:
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())  # a fenced answer counts too
    try:
        model.model_validate_json(body)
        return True
    except (ValidationError, ValueError):
        return False


def mask_cost(engine: edgekit.Engine, rounds: int) -> dict:
    """Median decode step vs. median mask work per token, over the tokens of constrained answers."""
    answers = []
    for name, (model, prompts) in CASES.items():
        for text in prompts:
            messages = _messages(model, text)
            done = engine.chat(messages, json_schema=model.model_json_schema(), max_new_tokens=120)
            answers.append((name, model, messages, done.token_ids))
    engine.reset()
    steps, masks = [], []
    runtime = engine.runtime
    compiler = engine._compiler()
    eos = sorted(engine.tokenizer.eos_token_ids)
    for _ in range(rounds):
        for _name, model, messages, tokens in answers:
            ids = engine.prompt_ids(messages)
            runtime.reset()
            logits = runtime.prefill(ids)
            from edgekit.generation.constraints import Constraint

            mask = compiler.compile(Constraint("json_schema", model.model_json_schema()), eos)
            for token in tokens:
                start = time.perf_counter()
                masked = mask.apply(logits)
                assert np.isfinite(masked[token])
                mask.accept(token)
                masks.append(time.perf_counter() - start)
                start = time.perf_counter()
                logits = runtime.decode(token)
                steps.append(time.perf_counter() - start)
    engine.reset()
    step, cost = statistics.median(steps), statistics.median(masks)
    return {
        "tokens": len(masks),
        "decode_step_ms_median": round(step * 1e3, 3),
        "mask_ms_median": round(cost * 1e3, 3),
        "mask_ms_p90": round(float(np.percentile(masks, 90)) * 1e3, 3),
        "mask_ms_max": round(max(masks) * 1e3, 3),
        "overhead_percent_median": round(100 * cost / step, 2),
    }


def answer_speed(engine: edgekit.Engine, rounds: int) -> dict:
    """Decode tokens/s of whole answers, constrained and not, alternating (one prompt, same length)."""
    messages = _messages(Event, CASES["event"][1][0])
    free, constrained = [], []
    for _ in range(rounds):
        engine.reset()
        done = engine.chat(messages, json_schema=Event.model_json_schema(), max_new_tokens=120)
        constrained.append(done.stats.generation_tokens_per_s)
        engine.reset()
        plain = engine.chat(messages, max_new_tokens=len(done.token_ids), ignore_eos=True)
        free.append(plain.stats.generation_tokens_per_s)
    return {
        "unconstrained_tokens_per_s": [round(x, 1) for x in free],
        "constrained_tokens_per_s": [round(x, 1) for x in constrained],
        "median_ratio": round(statistics.median(c / f for c, f in zip(constrained, free, strict=True)), 3),
    }


def validity(engine: edgekit.Engine, samples: int) -> dict:
    table = {}
    for name, (model, prompts) in CASES.items():
        counts = {"free": 0, "constrained": 0, "constrained_cut_off": 0, "answers": 0}
        for text in prompts:
            messages = _messages(model, text)
            for seed in range(samples):
                kw = {"max_new_tokens": 160, "temperature": 0.7 if seed else 0.0, "seed": seed}
                counts["answers"] += 1
                counts["free"] += _valid(model, engine.chat(messages, **kw).text)
                done = engine.chat(messages, json_schema=model.model_json_schema(), **kw)
                if done.finish_reason == "stop":
                    assert _valid(model, done.text), done.text
                    counts["constrained"] += 1
                else:
                    counts["constrained_cut_off"] += 1
        table[name] = counts
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2, help="answers per prompt: greedy, then sampled at 0.7")
    parser.add_argument("--out", default="bench/results/structured.json")
    args = parser.parse_args()
    engine = edgekit.load(args.artifact)
    import llguidance

    result = {
        "artifact": str(args.artifact),
        "backend": engine.backend,
        "llguidance": llguidance.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "mask_cost": mask_cost(engine, args.rounds),
        "answer_speed": answer_speed(engine, args.rounds),
        "validity": validity(engine, args.samples),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    cost = result["mask_cost"]
    print(
        f"decode step {cost['decode_step_ms_median']} ms, mask {cost['mask_ms_median']} ms "
        f"(p90 {cost['mask_ms_p90']}): +{cost['overhead_percent_median']}% per token over {cost['tokens']} tokens"
    )
    print(f"answers, constrained / unconstrained tokens/s: {result['answer_speed']}")
    print("| schema | answers | valid without constraint | valid with constraint | cut off (length) |")
    print("|---|---|---|---|---|")
    for name, c in result["validity"].items():
        print(f"| {name} | {c['answers']} | {c['free']} | {c['constrained']} | {c['constrained_cut_off']} |")


if __name__ == "__main__":
    main()
