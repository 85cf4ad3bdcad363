"""Pre-processing that turns a served input into the ONNX model's input.

Today: raw text (BYTES, one UTF-8 document per row) -> token ids with the training
tokenizer. Each row is padded to its *own* length bucket and becomes its own batch
part, so a document scores the same whether it runs alone or beside long ones.
Configured in config.pbtxt parameters:

    parameters { key: "text_preprocessor" value { string_value: "tokenizer.json" } }
    parameters { key: "text_preprocessor_output" value { string_value: "token_ids" } }
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.core.errors import InvalidInputError, ModelLoadError
from server.core.tokenizer import Tokenizer, max_window_chars

TEXT_PREPROCESSOR = "text_preprocessor"
TEXT_PREPROCESSOR_OUTPUT = "text_preprocessor_output"
# Requests with more text than this tokenize in a worker thread (a few ms of work).
HEAVY_TEXT_BYTES = 64 * 1024
MAX_UTF8_BYTES_PER_CHAR = 4


@dataclass(frozen=True)
class TextPreprocessor:
    """BYTES input ``input_name`` -> int ids for ONNX input ``output_name``."""

    tokenizer: Tokenizer
    input_name: str
    output_name: str
    dtype: np.dtype

    def is_heavy(self, inputs: dict[str, np.ndarray]) -> bool:
        """Whether tokenizing these texts takes long enough to leave the event loop."""
        values = inputs.get(self.input_name)
        if values is None or values.dtype != object:
            return False
        return sum(len(v) for v in values.reshape(-1) if isinstance(v, bytes)) > HEAVY_TEXT_BYTES

    def rows(self, values: np.ndarray) -> list[np.ndarray]:
        """One (1, bucket) id array per row of a [rows, 1] BYTES array."""
        out = []
        # Only a text's tail reaches the model (the tokenizer keeps its last max_tokens
        # words); decoding and tokenizing no more than that bounds the work per row.
        keep = MAX_UTF8_BYTES_PER_CHAR * max_window_chars(self.tokenizer.config.max_tokens)
        for index, value in enumerate(values.reshape(-1)):
            data = bytes(value)
            text = _decode_tail(data, keep, self.input_name, index)
            if not text.strip():
                raise InvalidInputError(
                    f"input {self.input_name!r} element {index} is empty; send the text "
                    "to score (an empty text carries no sentiment)")
            ids = self.tokenizer.encode_padded(text)
            out.append(ids.astype(self.dtype, copy=False).reshape(1, -1))
        return out

    def warmup_shapes(self) -> list[tuple[int, ...]]:
        return [(bucket,) for bucket in self.tokenizer.config.buckets]


def _decode_tail(data: bytes, keep: int, name: str, index: int) -> str:
    """The UTF-8 text of ``data``, or of its last ``keep`` bytes (a few bytes more or
    less, so no character is split)."""
    offset = 0
    if len(data) > keep:
        offset = len(data) - keep
        # Step past UTF-8 continuation bytes (10xxxxxx) to the next character's start.
        while offset < len(data) and data[offset] & 0xC0 == 0x80:
            offset += 1
        data = data[offset:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"input {name!r} element {index} is not valid UTF-8 ({exc.reason} at byte "
            f"{exc.start + offset}); send UTF-8 encoded text") from None


def build_text_preprocessor(parameters: dict[str, str], version_dir: Path, input_name: str,
                            onnx_inputs: dict[str, str], where: str) -> TextPreprocessor:
    """Read the tokenizer files of one model version; check the ONNX input they feed."""
    config_file = parameters[TEXT_PREPROCESSOR]
    output_name = parameters.get(TEXT_PREPROCESSOR_OUTPUT, "")
    if output_name not in onnx_inputs:
        raise ModelLoadError(f"{where}: parameter {TEXT_PREPROCESSOR_OUTPUT}={output_name!r} "
                             f"must name an ONNX input, one of {sorted(onnx_inputs)}")
    if onnx_inputs[output_name] not in ("INT32", "INT64"):
        raise ModelLoadError(f"{where}: ONNX input {output_name!r} is "
                             f"{onnx_inputs[output_name]}; token ids need INT32 or INT64")
    config_path = (version_dir / config_file)
    if Path(config_file).name != config_file or not config_path.is_file():
        raise ModelLoadError(f"{where}: {TEXT_PREPROCESSOR}={config_file!r} must be a file "
                             f"name inside {version_dir}")
    try:
        tokenizer = Tokenizer.from_directory(version_dir, config_file)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{where}: cannot read the tokenizer in {version_dir}: "
                             f"{exc}") from None
    dtype = np.dtype(np.int32 if onnx_inputs[output_name] == "INT32" else np.int64)
    return TextPreprocessor(tokenizer, input_name, output_name, dtype)
