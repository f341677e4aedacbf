#!/usr/bin/env sh
# Ask a `deploykit serve` server for predictions with plain curl: KServe v2 JSON, then v1 :predict.
# Usage: examples/client_curl.sh [HOST:PORT] [MODEL]   (defaults: 127.0.0.1:8080 model_mc)
set -eu
URL="http://${1:-127.0.0.1:8080}"
MODEL="${2:-model_mc}"
# scikit-learn's digits sample 0 (a "0"): 64 raw pixel values 0-16
PIXELS="0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0"

curl -fsS "$URL/v2/health/ready" && echo
curl -fsS "$URL/v2/models/$MODEL" && echo

# v2 (Open Inference Protocol), JSON tensors; `samples` applies to MC Dropout models only
curl -fsS -X POST "$URL/v2/models/$MODEL/infer" -H "Content-Type: application/json" -d "{
  \"parameters\": {\"samples\": 50},
  \"inputs\": [{\"name\": \"input\", \"shape\": [1, 64], \"datatype\": \"FP32\", \"data\": [$PIXELS]}]
}" && echo

# v1 (TF Serving style): one prediction per instance
curl -fsS -X POST "$URL/v1/models/$MODEL:predict" -H "Content-Type: application/json" \
  -d "{\"instances\": [[$PIXELS]]}" && echo
