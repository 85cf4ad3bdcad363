"""Writes the Triton-layout model repository: config.pbtxt files and model cards.

config.pbtxt is written from a text template (Triton ModelConfig text format) so
training does not depend on the generated protobuf modules.
"""

from __future__ import annotations

import json
import os
import platform

MAX_BATCH_SIZE = 64
MAX_QUEUE_DELAY_US = 500
MAX_QUEUE_SIZE = 1024


def model_config(name: str, inputs: list[tuple[str, str, list[int]]], outputs: list[tuple[str, str, list[int]]],
                 parameters: dict[str, str] | None = None) -> str:
    """Triton config.pbtxt text; tensors are (name, TYPE_*, dims without the batch dim)."""

    def tensors(items):
        return ",\n".join(f'  {{ name: "{n}" data_type: {t} dims: [ {", ".join(map(str, d))} ] }}' for n, t, d in items)

    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {MAX_BATCH_SIZE}",
        "version_policy { latest { num_versions: 1 } }",
        f"input [\n{tensors(inputs)}\n]",
        f"output [\n{tensors(outputs)}\n]",
        "instance_group [ { kind: KIND_AUTO count: 1 } ]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}",
        "  default_queue_policy {",
        "    timeout_action: REJECT",
        "    default_timeout_microseconds: 0",
        f"    max_queue_size: {MAX_QUEUE_SIZE}",
        "  }",
        "}",
    ]
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def mnist_config(name: str = "mnist") -> str:
    return model_config(name, [("image", "TYPE_FP32", [28, 28, 1])], [("probabilities", "TYPE_FP32", [10])])


def sentiment_config(tokenizer_file: str = "tokenizer.json", name: str = "sentiment") -> str:
    return model_config(
        name, [("text", "TYPE_STRING", [1])], [("probability", "TYPE_FP32", [1])],
        {"text_preprocessor": tokenizer_file, "text_preprocessor_output": "token_ids"},
    )


def write_config(repository: str, name: str, text: str) -> str:
    path = os.path.join(repository, name, "config.pbtxt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def library_versions() -> dict:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy"):
        try:
            versions[dist.replace("-cpu", "")] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return versions


def write_card(repository: str, name: str, card: dict) -> None:
    """models/<name>/1/model_card.json (machine) and models/<name>/MODEL_CARD.md (human)."""
    with open(os.path.join(repository, name, "1", "model_card.json"), "w", encoding="utf-8") as f:
        json.dump(card, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(repository, name, "MODEL_CARD.md"), "w", encoding="utf-8") as f:
        f.write(_markdown(card))


def _markdown(card: dict) -> str:
    if card.get("int8"):
        return _int8_markdown(card)
    m, p = card["metrics"], card["parity"]
    lines = [
        f"# Model card: {card['name']}", "",
        card["description"], "",
        "## Interface", "",
        f"- Served input: {card['interface']['served_input']}",
        f"- Served output: {card['interface']['served_output']}",
        f"- ONNX graph: {card['interface']['onnx']}",
        f"- Preprocessing: {card['interface']['preprocessing']}", "",
        "## Evaluation (full test set)" if not card["quick"] else "## Evaluation (QUICK MODE: subsets, not a real model)", "",
        "| metric | value |", "| --- | --- |",
        f"| test examples | {m['test_examples']} |",
        f"| test accuracy, ONNX Runtime (CPU) | {m['test_accuracy_onnx']:.4f} |",
        f"| test accuracy, Keras | {m['test_accuracy_keras']:.4f} |",
        f"| parity max abs diff (ONNX vs Keras) | {p['max_abs_diff']:.2e} (tolerance {p['tolerance']:g}) |",
        f"| parity class agreement | {p['class_agreement']:.4f} |",
        *[f"| {k} | {v} |" for k, v in card.get("extra_metrics", {}).items()], "",
        "## Training", "",
        f"- Data: {card['data']['description']}",
        f"- Validation: {card['data']['validation']}",
        f"- Epochs run: {card['training']['epochs_run']} (max {card['training']['hyperparameters']['epochs']}), "
        f"seed {card['training']['seed']}, training time {card['training']['seconds']:.0f} s",
        f"- Hyperparameters: `{json.dumps(card['training']['hyperparameters'], sort_keys=True)}`",
        "- Data files (sha256):",
        *[f"  - `{k}`: `{v}`" for k, v in card["data"]["sha256"].items()],
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()), "",
        "## Limitations", "", card["limitations"], "",
    ]
    if card.get("notes"):
        lines += ["## Notes", "", card["notes"], ""]
    lines += [f"![{img}]({img})" for img in card.get("figures", [])]
    return "\n".join(lines) + "\n"


def _int8_markdown(card: dict) -> str:
    q, s = card["int8"], card["int8"]["speed"]
    lines = [
        f"# Model card: {card['name']}", "",
        card["description"], "",
        "## Interface", "", f"Same as `{q['source_model']}`: {card['interface']}", "",
        "## Evaluation (full test set, ONNX Runtime CPU)" if not card["quick"]
        else "## Evaluation (QUICK MODE: subsets, not a real model)", "",
        "| metric | value |", "| --- | --- |",
        f"| test examples | {card['metrics']['test_examples']} |",
        f"| test accuracy, INT8 | {q['int8_accuracy']:.4f} |",
        f"| test accuracy, FP32 (`{q['source_model']}`) | {q['fp32_accuracy']:.4f} |",
        f"| accuracy drop | {q['drop'] * 100:.2f} points (gate: at most {q['max_drop'] * 100:.1f}) |",
        f"| max abs diff of outputs vs FP32 | {q['max_abs_diff_vs_fp32']:.2e} |",
        *[f"| {k} | {v} |" for k, v in card.get("extra_metrics", {}).items()], "",
        "## Speed (one in-process ONNX Runtime session, 2 threads, same inputs)", "",
        "| batch | FP32 rows/s | INT8 rows/s | INT8 / FP32 |", "| --- | --- | --- | --- |",
        *[f"| {r['batch_size']} | {r['fp32_rows_per_s']:.0f} | {r['int8_rows_per_s']:.0f} | {r['speedup']:.2f}x |"
          for r in s], "",
        f"Inputs: {q['speed_inputs']}. Measured in the training process, on the machine that trained;",
        "absolute figures drift between machines and runs, the ratio is what matters (runs alternate",
        "between the two).", "",
        "## Quantization", "", q["method"], "",
        "## Limitations", "", card["limitations"], "",
    ]
    return "\n".join(lines) + "\n"
