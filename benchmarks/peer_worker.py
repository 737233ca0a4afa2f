"""One measurement of `compare_peers.py`, run as a child process in the environment that has the library it measures.

    PYTHON benchmarks/peer_worker.py MEASUREMENT --corpus FILE --tokenizer DIR --max-len L [--rows N] [--num-proc N]

MEASUREMENT is one of:

- ``ceiling``: the Rust tokenizer alone on the pre-rendered conversations (``apply_chat_template(...,
  tokenize=False)``, not timed), in batches of 1000 with ``add_special_tokens=False``; also reports every row's length,
  so the parent can compare token counts with the paths that drop or truncate long rows. With ``--num-proc N`` (N >
  1) the texts are split into N contiguous shares, each tokenized by its own forked process with one thread, and the
  time runs from when all are ready to when the last one ends. With ``--encoder tiktoken`` the encoder is the
  tiktoken one dsprep uses for ``--tokenizer-name`` (``LoadedTokenizer.fast``; this needs dsprep) and each text is
  one ``encode_ordinary`` call (a list of ints), with ``--encoder tiktoken-numpy`` one ``encode_to_numpy`` call (an
  array, the call dsprep makes): the rawest forms of that encoder, without dsprep's added-token cut or offsets.
  ``--encoder tiktoken-parquet`` adds what any tool writing these shards must also do: each process lays its rows'
  arrays end to end into rows of at most L tokens (in order, rows over L left out) and writes them as dsprep's
  packed Parquet (`dsprep.pack.packed_table`, `dsprep.shards.ShardFile`, same columns and encoding), labels a copy of
  the ids: the floor of tokenizing and writing alone, without reading, rendering, masks or a packing plan.
  ``--encoder fastokens`` and ``fastokens-parquet`` do the same with the engine dsprep runs that encoder on where
  fastokens is installed (`dsprep.ordinary`), one call per text as dsprep makes it;
- ``trl``: ``SFTTrainer._prepare_dataset`` (the method ``SFTTrainer.__init__`` calls, here without a model) with
  ``SFTConfig(assistant_only_loss=True, packing=True, packing_strategy="bfd", max_length=L, dataset_num_proc=N)``;
- ``torchtune``: ``SFTDataset`` (OpenAI messages, ``train_on_input=False``) over a ChatML model tokenizer written the
  way torchtune writes its own (per-message encoding of header, content and end marker, as its Qwen2.5 ChatML
  tokenizer does) around ``HuggingFaceBaseTokenizer`` on the same ``tokenizer.json``, a full indexing pass, then
  ``PackedDataset(ds, max_seq_len=L, split_across_pack=False)``, which tokenizes again and packs;
- ``axolotl``: Axolotl's ``chat_template`` prompt strategy with the tokenizer's template through
  ``TokenizedPromptDataset`` (the tokenize step of ``axolotl preprocess``), rows over L dropped as Axolotl does, then
  its ``MultipackBatchSampler`` bins of L tokens;
- ``llamafactory``: LLaMA-Factory's ``get_dataset`` for SFT with its ``chatml`` template, ``packing`` and
  ``neat_packing`` on (so padding is told apart from tokens), ``cutoff_len=L``.

The corpus is an OpenAI-chat JSONL file and DIR a tokenizer folder whose ``chat_template`` is the ChatML template;
neither needs dsprep. Reading the corpus and loading the library are not timed. The last stdout line is
``RESULT {json}`` with seconds, tokens, rows out and what else the measurement knows; the parent reads peak RSS from
``wait4``.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import Timer, offline_hf

_HF_TMP = offline_hf("peer-worker-hf-")


CEILING_BATCH = 1000
IGNORE = -100
Result = dict[str, Any]


def read_corpus(path: str, rows: int | None) -> list[list[dict[str, str]]]:
    convs = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if rows is not None and len(convs) >= rows:
                break
            convs.append(json.loads(line)["messages"])
    return convs


def hf_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _quiet_datasets() -> Any:
    import datasets

    datasets.disable_caching()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    return datasets


def measure_ceiling(args: argparse.Namespace) -> Result:
    if args.num_proc > 1 or args.encoder != "hf":
        return _ceiling_processes(args)
    tok = hf_tokenizer(args.tokenizer)
    texts = tok.apply_chat_template(read_corpus(args.corpus, args.rows), tokenize=False)
    encode = _encoder(args, tok)
    with Timer() as timer:
        lengths = encode(texts)
    return {"seconds": timer.wall, "cpu": timer.cpu, "rows_in": len(texts), "tokens": sum(lengths), "lengths": lengths}


def _encoder(args: argparse.Namespace, tok: Any) -> Callable[[list[str]], list[int]]:
    """texts -> token counts, with the Hugging Face tokenizer (batches of CEILING_BATCH) or tiktoken."""
    if args.encoder != "hf":
        from dsprep.tokenizers import load_tokenizer

        fast = load_tokenizer(args.tokenizer_name).fast
        if fast is None:
            raise SystemExit(f"{args.tokenizer_name} has no tiktoken encoder in dsprep")
        if args.encoder.startswith("fastokens"):
            engine = fast.ordinary
            if engine.wait() != "fastokens":  # built before any process is forked: its thread would not be copied
                raise SystemExit("fastokens is not installed, or does not take this tokenizer")
            if args.encoder == "fastokens-parquet":
                return _encode_and_write(lambda text, **_: engine.encode(text), args.max_len)
            return lambda texts: [len(engine.encode(t)) for t in texts]
        if args.encoder == "tiktoken-numpy":
            to_numpy = fast.ordinary.tiktoken.encode_to_numpy
            return lambda texts: [len(to_numpy(t, disallowed_special=())) for t in texts]
        if args.encoder == "tiktoken-parquet":
            return _encode_and_write(fast.ordinary.tiktoken.encode_to_numpy, args.max_len)
        encode_ordinary = fast.ordinary.tiktoken.encode_ordinary
        return lambda texts: [len(encode_ordinary(t)) for t in texts]

    def hf(texts: list[str]) -> list[int]:
        lengths: list[int] = []
        for i in range(0, len(texts), CEILING_BATCH):
            out = tok(texts[i : i + CEILING_BATCH], add_special_tokens=False)
            lengths.extend(len(ids) for ids in out["input_ids"])
        return lengths

    return hf


FLOOR_CHUNK_TOKENS = 1 << 21  # tokens per written table, as dsprep writes its packed chunks


def _encode_and_write(to_numpy: Callable[..., Any], max_len: int) -> Callable[[list[str]], list[int]]:
    """texts -> token counts: encode into arrays and write them, next-fit into rows of at most `max_len`, as packed
    Parquet in a temporary folder (removed after). The libraries load now, not while timed."""
    import numpy as np
    import pyarrow as pa

    from dsprep.pack import packed_table
    from dsprep.schema import PACKED
    from dsprep.shards import ShardFile, parquet_options

    options = parquet_options(PACKED)

    def write(shard: Any, arrays: list[Any], sizes: list[int]) -> None:
        counts, row, used = [], 0, 0
        for n in sizes:
            if used + n > max_len:
                counts.append(row)
                row, used = 0, 0
            row, used = row + 1, used + n
        counts.append(row)
        ids = np.concatenate(arrays)
        names = pa.array([str(k) for k in range(len(arrays))], pa.string())
        shard.write(packed_table(ids, ids.copy(), np.asarray(sizes, np.int64), np.asarray(counts, np.int64), names))

    def encode(texts: list[str]) -> list[int]:
        arrays = [to_numpy(t, disallowed_special=()).view(np.int32) for t in texts]
        lengths = [len(a) for a in arrays]
        with tempfile.TemporaryDirectory(prefix="ceiling-parquet-") as folder:
            shard = ShardFile(Path(folder) / "part-00000.parquet", PACKED, options)
            chunk: list[Any] = []
            sizes: list[int] = []
            tokens = 0
            for a, n in zip(arrays, lengths, strict=True):
                if not 0 < n <= max_len:
                    continue
                chunk.append(a)
                sizes.append(n)
                tokens += n
                if tokens >= FLOOR_CHUNK_TOKENS:
                    write(shard, chunk, sizes)
                    chunk, sizes, tokens = [], [], 0
            if chunk:
                write(shard, chunk, sizes)
            shard.close()
        return lengths

    return encode


def _ceiling_processes(args: argparse.Namespace) -> Result:
    """The tokenizer in --num-proc forked processes, each on a contiguous share of the texts with one thread.

    The clock starts when every process has its share and the tokenizer (so loading is not timed, as in the
    one-process ceiling) and stops when the last one finishes.
    """
    import multiprocessing

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process, set before the tokenizer loads
    tok = hf_tokenizer(args.tokenizer)
    texts = tok.apply_chat_template(read_corpus(args.corpus, args.rows), tokenize=False)
    encode = _encoder(args, tok)
    context = multiprocessing.get_context("fork")  # no tokenizer thread has started: forking is safe
    barrier, queue = context.Barrier(args.num_proc), context.Queue()
    step = -(-len(texts) // args.num_proc)
    shares = [texts[k * step : (k + 1) * step] for k in range(args.num_proc)]

    def part(k: int) -> None:
        barrier.wait()
        start, cpu = time.perf_counter(), time.process_time()
        lengths = encode(shares[k])
        queue.put((k, start, time.perf_counter(), time.process_time() - cpu, lengths))

    procs = [context.Process(target=part, args=(k,)) for k in range(args.num_proc)]
    for p in procs:
        p.start()
    parts = sorted(queue.get() for _ in procs)
    for p in procs:
        p.join()
    lengths = [n for *_, share in parts for n in share]
    seconds = max(end for _, _, end, _, _ in parts) - min(start for _, start, _, _, _ in parts)
    cpu = sum(c for *_, c, _ in parts)
    return {"seconds": seconds, "cpu": cpu, "rows_in": len(texts), "tokens": sum(lengths), "lengths": lengths}


def measure_trl(args: argparse.Namespace) -> Result:
    from trl import SFTConfig, SFTTrainer

    datasets = _quiet_datasets()
    tok = hf_tokenizer(args.tokenizer)
    convs = read_corpus(args.corpus, args.rows)
    ds = datasets.Dataset.from_dict({"messages": convs})
    with tempfile.TemporaryDirectory(prefix="peer-worker-trl-") as out_dir:
        with warnings.catch_warnings():  # SFTConfig warns about deprecated TrainingArguments names it sets itself
            warnings.simplefilter("ignore", FutureWarning)
            config = SFTConfig(
                output_dir=out_dir,
                assistant_only_loss=True,
                packing=True,
                packing_strategy="bfd",
                max_length=args.max_len,
                dataset_num_proc=args.num_proc,
                use_cpu=True,
                report_to="none",
            )
        # What SFTTrainer.__init__ sets before _prepare_dataset: the template has {% generation %} markers, so TRL
        # keeps the tokenizer's own template; a conversational dataset is not completion-only.
        fake_self = argparse.Namespace(_tokenizer=tok, chat_template=None, completion_only_loss=False)
        with Timer() as timer:
            out = SFTTrainer._prepare_dataset(fake_self, ds, tok, config, True, None, "train")
    ids = out.data.column("input_ids")
    tokens = sum(len(x) for x in ids.to_pylist())
    if "labels" in out.column_names:
        trained = sum(sum(1 for t in row if t != IGNORE) for row in out.data.column("labels").to_pylist())
    elif "assistant_masks" in out.column_names:
        trained = sum(sum(row) for row in out.data.column("assistant_masks").to_pylist())
    else:
        trained = None
    return {
        "seconds": timer.wall,
        "cpu": timer.cpu,
        "rows_in": len(convs),
        "tokens": tokens,
        "rows_out": len(out),
        "trained": trained,
        "columns": out.column_names,
    }


def _chatml_model_tokenizer(path: str, max_seq_len: int) -> Any:
    """A torchtune ModelTokenizer + Transform for ChatML over a tokenizer.json (per-message, like Qwen2.5's)."""
    from torchtune.data import truncate
    from torchtune.modules.transforms import Transform
    from torchtune.modules.transforms.tokenizers import HuggingFaceBaseTokenizer, ModelTokenizer

    class ChatMLTokenizer(ModelTokenizer, Transform):
        def __init__(self) -> None:
            self.base = HuggingFaceBaseTokenizer(
                os.path.join(path, "tokenizer.json"),
                tokenizer_config_json_path=os.path.join(path, "tokenizer_config.json"),
            )
            self.max_seq_len = max_seq_len
            self.special_tokens: dict[str, int] = {}

        def encode(self, text: str) -> list[int]:
            return self.base.encode(text, add_bos=False, add_eos=False)

        def tokenize_messages(self, messages: list[Any], **kwargs: Any) -> tuple[list[int], list[bool]]:
            tokens: list[int] = []
            mask: list[bool] = []
            for message in messages:
                header = self.encode(f"<|im_start|>{message.role}\n")
                body = self.encode(message.text_content) + self.encode("<|im_end|>\n")
                tokens += header + body
                mask += [True] * len(header) + [message.masked] * len(body)
            return truncate(tokens, self.max_seq_len), truncate(mask, self.max_seq_len)

        def __call__(self, sample: dict[str, Any], inference: bool = False) -> dict[str, Any]:
            sample["tokens"], sample["mask"] = self.tokenize_messages(sample.pop("messages"))
            return sample

    return ChatMLTokenizer()


def measure_torchtune(args: argparse.Namespace) -> Result:
    from torchtune.data import Message, OpenAIToMessages
    from torchtune.datasets import PackedDataset, SFTDataset

    _quiet_datasets()
    to_messages = OpenAIToMessages(train_on_input=False)

    def message_transform(sample: dict[str, Any]) -> dict[str, list[Message]]:
        return to_messages(sample)

    with tempfile.TemporaryDirectory(prefix="peer-worker-torchtune-") as tmp:
        subset = os.path.join(tmp, "corpus.jsonl")
        with open(subset, "w", encoding="utf-8") as fh:
            for conv in read_corpus(args.corpus, args.rows):
                fh.write(json.dumps({"messages": conv}) + "\n")
        model_transform = _chatml_model_tokenizer(args.tokenizer, args.max_len)
        ds = SFTDataset(
            source="json",
            data_files=subset,
            split="train",
            message_transform=message_transform,
            model_transform=model_transform,
        )
        with Timer() as tokenize:
            lengths = [len(ds[i]["tokens"]) for i in range(len(ds))]
        with Timer() as pack:
            packed = PackedDataset(ds, max_seq_len=args.max_len, split_across_pack=False)
    return {
        "seconds": pack.wall,
        "cpu": pack.cpu,
        "tokenize_seconds": tokenize.wall,
        "rows_in": len(ds),
        "tokens": sum(lengths),
        "rows_out": len(packed),
    }


def measure_axolotl(args: argparse.Namespace) -> Result:
    from axolotl.datasets import TokenizedPromptDataset
    from axolotl.prompt_strategies.chat_template import StrategyLoader
    from axolotl.utils.dict import DictDefault
    from axolotl.utils.samplers.multipack import MultipackBatchSampler

    datasets = _quiet_datasets()
    tok = hf_tokenizer(args.tokenizer)
    convs = read_corpus(args.corpus, args.rows)
    ds = datasets.Dataset.from_dict({"messages": convs})
    cfg = DictDefault({"sequence_len": args.max_len, "train_on_inputs": False, "chat_template": "tokenizer_default"})
    ds_cfg = {"type": "chat_template", "field_messages": "messages", "chat_template": "tokenizer_default"}
    strategy = StrategyLoader()(tok, cfg, ds_cfg)
    with Timer() as timer:
        out = TokenizedPromptDataset(strategy, ds, process_count=args.num_proc)
        lengths = [len(x) for x in out.data.column("input_ids").to_pylist()]
        kept = [n for n in lengths if n <= args.max_len]
        sampler = MultipackBatchSampler(
            sampler=range(len(kept)),
            batch_size=1,
            batch_max_len=args.max_len,
            lengths=kept,
            bin_size=200,
            drop_last=False,
        )  # Axolotl's default bin size
        bins = [b for batch in sampler.generate_batches() for b in batch]
    return {
        "seconds": timer.wall,
        "cpu": timer.cpu,
        "rows_in": len(convs),
        "tokens": sum(lengths),
        "packed_tokens": sum(kept),
        "rows_out": len(bins),
        "dropped": len(lengths) - len(kept),
    }


def measure_llamafactory(args: argparse.Namespace) -> Result:
    try:
        import torchaudio  # noqa: F401
    except ImportError:  # imported at load for audio inputs; no build works with torch 2.13; text never calls it
        stub = sys.modules["torchaudio"] = types.ModuleType("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    _quiet_datasets()
    convs = read_corpus(args.corpus, args.rows)
    with tempfile.TemporaryDirectory(prefix="peer-worker-llamafactory-") as tmp:
        with open(os.path.join(tmp, "corpus.jsonl"), "w", encoding="utf-8") as fh:
            for conv in convs:
                fh.write(json.dumps({"messages": conv}) + "\n")
        info = {
            "bench": {
                "file_name": "corpus.jsonl",
                "formatting": "sharegpt",
                "columns": {"messages": "messages"},
                "tags": {
                    "role_tag": "role",
                    "content_tag": "content",
                    "user_tag": "user",
                    "assistant_tag": "assistant",
                    "system_tag": "system",
                },
            }
        }
        with open(os.path.join(tmp, "dataset_info.json"), "w") as fh:
            json.dump(info, fh)
        model_args, data_args, training_args, _, _ = get_train_args(
            {
                "model_name_or_path": args.tokenizer,
                "stage": "sft",
                "do_train": True,
                "finetuning_type": "full",
                "dataset": "bench",
                "dataset_dir": tmp,
                "template": "chatml",
                "cutoff_len": args.max_len,
                "packing": True,
                "neat_packing": True,  # the same packs; attention_mask then numbers the examples, 0 on padding
                "preprocessing_num_workers": args.num_proc,
                "overwrite_cache": True,
                "output_dir": os.path.join(tmp, "out"),
                "report_to": "none",
                "use_cpu": True,
            }
        )
        module = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
        with Timer() as timer:
            out = get_dataset(template, model_args, data_args, training_args, stage="sft", **module)
    train = out["train_dataset"]
    tokens = sum(sum(1 for m in row if m) for row in train.data.column("attention_mask").to_pylist())  # not padding
    return {"seconds": timer.wall, "cpu": timer.cpu, "rows_in": len(convs), "tokens": tokens, "rows_out": len(train)}


MEASUREMENTS: dict[str, Callable[[argparse.Namespace], Result]] = {
    "ceiling": measure_ceiling,
    "trl": measure_trl,
    "torchtune": measure_torchtune,
    "axolotl": measure_axolotl,
    "llamafactory": measure_llamafactory,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("measurement", choices=sorted(MEASUREMENTS))
    parser.add_argument("--corpus", required=True, help="OpenAI-chat JSONL file")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder with the ChatML chat_template")
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=None, help="use the first N conversations (default: all)")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes where the library has them")
    encoders = ["hf", "tiktoken", "tiktoken-numpy", "tiktoken-parquet", "fastokens", "fastokens-parquet"]
    parser.add_argument("--encoder", choices=encoders, default="hf", help="ceiling: which encoder")
    parser.add_argument("--tokenizer-name", default="mistral:tekken", help="ceiling --encoder tiktoken: dsprep name")
    args = parser.parse_args()
    result = MEASUREMENTS[args.measurement](args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
