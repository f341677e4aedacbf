#!/usr/bin/env sh
# Ask a `deploykit serve` server for predictions with plain curl: KServe v2 JSON, then v1 :predict.
# Usage: examples/client_curl.sh [HOST:PORT] [MODEL] [VALUES]   (defaults: 127.0.0.1:8080 model_mc)
# The input's name and shape are read from the model's metadata (/v2/models/MODEL). VALUES is a file holding
# one sample as comma-separated numbers (e.g. from numpy: ','.join(map(str, x[0].ravel()))); without it a
# synthetic sample of the right size is sent. --fail-with-body: a refused request prints the server's message.
set -eu
URL="http://${1:-127.0.0.1:8080}"
MODEL="${2:-model_mc}"
CURL="curl -sS --fail-with-body"

$CURL "$URL/v2/health/ready" && echo
META=$($CURL "$URL/v2/models/$MODEL") || { echo "$META" >&2; exit 1; }  # the server's message, e.g. no such model
echo "$META"
# "inputs":[{"name":"input","datatype":"FP32","shape":[-1,64]}]  ->  NAME=input DIMS=64
INPUT=$(echo "$META" | sed -n 's/.*"inputs":\[{\([^]]*\]\)}.*/\1/p')
NAME=$(echo "$INPUT" | sed -n 's/.*"name":"\([^"]*\)".*/\1/p')
DIMS=$(echo "$INPUT" | sed -n 's/.*"shape":\[-1,\([0-9,]*\)\].*/\1/p')
[ -n "$NAME" ] && [ -n "$DIMS" ] || { echo "cannot read the input of $MODEL from its metadata" >&2; exit 1; }
SIZE=$(echo "$DIMS" | awk -F, '{n = 1; for (i = 1; i <= NF; i++) n *= $i; print n}')
if [ $# -ge 3 ]; then
  VALUES=$(tr -d ' \n' < "$3")
else  # synthetic: SIZE values between 0 and 1
  VALUES=$(awk -v n="$SIZE" 'BEGIN { for (i = 0; i < n; i++) printf "%s%.3f", (i ? "," : ""), (i % 17) / 16 }')
fi

# v2 (Open Inference Protocol), JSON tensors; `samples` is used by MC Dropout models (others ignore it, with a note)
$CURL -X POST "$URL/v2/models/$MODEL/infer" -H "Content-Type: application/json" -d "{
  \"parameters\": {\"samples\": 50},
  \"inputs\": [{\"name\": \"$NAME\", \"shape\": [1,$DIMS], \"datatype\": \"FP32\", \"data\": [$VALUES]}]
}" && echo

# v1 (TF Serving style): one prediction per instance (a flat list of SIZE numbers is reshaped only for 1-D inputs)
if [ "$DIMS" = "$SIZE" ]; then
  $CURL -X POST "$URL/v1/models/$MODEL:predict" -H "Content-Type: application/json" \
    -d "{\"instances\": [[$VALUES]]}" && echo
fi
