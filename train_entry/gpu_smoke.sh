#!/usr/bin/env bash
# GPU smoke test of train_entry/unsloth_sft.py: Unsloth's real GPU path on dsprep's packed shards, fully offline.
#
#   train_entry/gpu_smoke.sh --prepare [WHEEL_DIR]    # where PyPI is reachable: fetch and slim the wheels (23 MB)
#   train_entry/gpu_smoke.sh [WHEEL_DIR] [DATA_FILE]  # on the GPU machine
#
# --prepare downloads train_entry/gpu_smoke_wheels.txt (Python 3.12, x86-64 Linux) and slims the two big wheels:
# unsloth without its studio/ web app, bitsandbytes with only its CUDA 13 and CPU libraries.
# WHEEL_DIR (default ./.whl): wheels to install with --no-index --no-deps into $WORK/site (put on PYTHONPATH), for
# what python3 lacks. DATA_FILE (default ../shared/data/sharegpt/fastchat__dummy_conversation.json beside the
# checkout, else fixtures/formats/sharegpt.jsonl): a chat file to convert. Steps: check the GPU, install the wheels
# and dsprep (from this checkout), check every package is importable, build a tiny random Llama (mistral:v3
# tokenizer, never downloaded), `dsprep convert --pack`, then train STEPS (default 5) steps, 4-bit when bitsandbytes
# imports (QUANT=4bit|bf16|auto). It prints whether Unsloth's padding-free path was taken (its "Padding-free enabled"
# banner and `packed_seq_lengths` in every batch, which dsprep checks) and exits non-zero when it was not, or when
# anything fails. Environment: WORK (default /tmp/dsprep-gpu-smoke), PYTHON, STEPS, QUANT, ALLOW_CPU=1 (no GPU: a
# dry run of this script on Unsloth's CPU backend).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "${1:-}" = --prepare ]; then
    DEST=$(realpath -m "${2:-.whl}")
    echo "== downloading $REPO/train_entry/gpu_smoke_wheels.txt into $DEST"
    "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$DEST" -r "$REPO/train_entry/gpu_smoke_wheels.txt"
    "${PYTHON:-python3}" - "$DEST" <<'EOF'
import glob, re, sys, zipfile
drop = {"unsloth-": re.compile(r"^studio/"), "bitsandbytes-": re.compile(r"libbitsandbytes_(?!cuda13|cpu).*\.so$")}
for prefix, pattern in drop.items():
    for path in glob.glob(f"{sys.argv[1]}/{prefix}*.whl"):
        with zipfile.ZipFile(path) as src:
            keep = [i for i in src.infolist() if not pattern.search(i.filename)]
            if len(keep) == len(src.infolist()):
                continue
            files = {i.filename: src.read(i) for i in keep}
        for name in files:  # RECORD must not list the dropped files
            if name.endswith(".dist-info/RECORD"):
                lines = files[name].decode().splitlines(keepends=True)
                files[name] = "".join(x for x in lines if x.split(",")[0] in files or x.endswith("RECORD,,\n")).encode()
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
            for name, data in files.items():
                out.writestr(name, data)
        print(f"slimmed {path}: dropped {pattern.pattern}")
EOF
    du -ch "$DEST"/*.whl | tail -1
    exit 0
fi
WHL=$(realpath -m "${1:-.whl}")
DATA=${2:-}
WORK=$(realpath -m "${WORK:-/tmp/dsprep-gpu-smoke}")
PY=${PYTHON:-python3}
STEPS=${STEPS:-5}
if [ -z "$DATA" ]; then
    DATA=$REPO/../shared/data/sharegpt/fastchat__dummy_conversation.json
    [ -f "$DATA" ] || DATA=$REPO/fixtures/formats/sharegpt.jsonl
fi
DATA=$(realpath -m "$DATA")
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
export DSPREP_CACHE=$WORK/cache PYTHONUNBUFFERED=1 PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}

step() { printf '\n== %s\n' "$*"; }
die() {
    echo "gpu_smoke: FAILED: $*" >&2
    exit 1
}
[ -f "$DATA" ] || die "data file $DATA not found"
rm -rf "$WORK"
mkdir -p "$WORK/site"
cd "$WORK"  # not the checkout: its dsprep/ folder would shadow the installed package (Unsloth also writes here)

step "1/6 python3, torch and the GPU"
GPU=yes
"$PY" - <<'EOF' || GPU=no
import sys, torch
print(f"python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, CUDA {torch.version.cuda}")
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
sys.exit(0 if torch.cuda.is_available() else 3)
EOF
if [ "$GPU" = no ]; then
    [ "${ALLOW_CPU:-0}" = 1 ] || die "python3's torch sees no CUDA GPU (ALLOW_CPU=1: dry run on Unsloth's CPU backend)"
    echo "ALLOW_CPU=1: dry run on Unsloth's CPU backend (not the GPU path)"
fi

step "2/6 wheels from $WHL (offline, --no-deps) into $WORK/site"
if compgen -G "$WHL/*.whl" >/dev/null; then
    ls "$WHL"/*.whl | xargs -n1 basename
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHL"/*.whl \
        || die "pip could not install the wheels in $WHL (two versions of one package?)"
else
    echo "no wheels in $WHL: using what $PY already has"
fi

step "3/6 dsprep from $REPO"
if compgen -G "$WHL/dsprep-*.whl" >/dev/null; then
    echo "installed from $(basename "$WHL"/dsprep-*.whl)"
else
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target "$WORK/site" "$REPO" \
        || die "could not build dsprep here (needs setuptools>=77); elsewhere: pip wheel --no-deps -w WHEEL_DIR ."
fi
if [ ! -d "$WORK/site/dsprep/integrations" ]; then  # a build whose [tool.setuptools] packages omit it
    echo "this dsprep build lacks dsprep.integrations: copying it from the checkout"
    cp -r "$REPO/dsprep/integrations" "$WORK/site/dsprep/"
fi

step "4/6 packages"
GPU=$GPU "$PY" - <<'EOF' || die "packages missing: carry their wheels (train_entry/gpu_smoke_wheels.txt) in the wheel folder"
import importlib.metadata as md, importlib.util as u, os
need = ["torch", "transformers", "peft", "accelerate", "trl", "datasets", "dill", "multiprocess", "unsloth",
        "unsloth_zoo", "pyarrow", "pandas", "tokenizers", "sentencepiece", "jinja2", "pydantic", "orjson", "click",
        "rich", "mistral_common", "dsprep"] + (["triton"] if os.environ["GPU"] == "yes" else [])
missing = [m for m in need if u.find_spec(m) is None]
def version(m):
    try:
        return md.version(m.replace("_", "-"))
    except md.PackageNotFoundError:
        return "?"
print(", ".join(f"{m} {version(m)}" for m in need if m not in missing))
print("optional:", ", ".join(f"{m} {version(m) if u.find_spec(m) else 'absent'}" for m in ("bitsandbytes", "xformers")))
if missing:
    raise SystemExit(f"missing: {', '.join(missing)}")
EOF

step "5/6 tiny random Llama (mistral:v3 tokenizer) and packed shards of $DATA"
"$PY" - "$WORK/tiny-llama" <<'EOF' || die "could not build the tiny model"
import sys, torch, transformers
from dsprep.tokenizers import load_tokenizer
tok = load_tokenizer("mistral:v3").tokenizer
config = transformers.LlamaConfig(
    vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
    eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, tie_word_embeddings=False,
)
torch.manual_seed(0)
transformers.LlamaForCausalLM(config).save_pretrained(sys.argv[1])
tok.save_pretrained(sys.argv[1])
print("saved", sys.argv[1])
EOF
"$PY" -m dsprep convert "$DATA" -o "$WORK/shards" -t "$WORK/tiny-llama" --template chatml --pack 256 \
    || die "dsprep convert failed"
"$PY" -m dsprep verify "$WORK/shards" || die "dsprep verify failed"

step "6/6 Unsloth SFT on the GPU: $STEPS steps"
case ${QUANT:-auto} in
4bit) FOURBIT=yes ;;
bf16) FOURBIT=no ;;
*) "$PY" -c "import bitsandbytes" >/dev/null 2>&1 && FOURBIT=yes || FOURBIT=no ;;
esac
if [ "$FOURBIT" = yes ]; then
    QUANT=(--load-in-4bit)
    echo "loading the model in 4-bit (bitsandbytes)"
else
    QUANT=()
    echo "loading the model in bf16 (no 4-bit: QUANT=bf16, or bitsandbytes does not import)"
fi
set +e
"$PY" "$REPO/train_entry/unsloth_sft.py" --shards "$WORK/shards" --model "$WORK/tiny-llama" --out "$WORK/run" \
    --max-steps "$STEPS" --batch-size 4 --dtype bfloat16 "${QUANT[@]}" 2>&1 | tee "$WORK/train.log"
status=${PIPESTATUS[0]}
set -e

banner=no batch=no
grep -q "Unsloth: Padding-free \(auto-\)\?enabled" "$WORK/train.log" && banner=yes
grep -q "dsprep: first batch: .*'packed_seq_lengths'" "$WORK/train.log" && batch=yes
printf '\n== summary\n'
echo "training exit status: $status"
echo "Unsloth 'Padding-free enabled' banner: $banner"
echo "packed_seq_lengths in the batch (Unsloth's padding-free metadata): $batch"
grep -h "dsprep: isolation:" "$WORK/train.log" || true
[ "$status" -eq 0 ] || die "training failed (log: $WORK/train.log)"
if [ "$GPU" = no ]; then
    grep -q "dsprep: isolation: Unsloth CPU backend" "$WORK/train.log" || die "the CPU backend's isolation was not set up"
    echo "gpu_smoke: CPU dry run OK (no GPU: Unsloth's GPU padding-free path not exercised)"
    exit 0
fi
[ "$batch" = yes ] || die "Unsloth's padding-free path was NOT taken"
[ "$banner" = yes ] || echo "note: no Unsloth banner: dsprep turned Unsloth's padding-free path on itself"
echo "gpu_smoke: OK: Unsloth's padding-free path was taken; ${QUANT[*]:-bf16} training finished"
