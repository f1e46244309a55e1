#!/bin/bash
# LocalStack ready hook: create login-queue and load the 100 sample messages,
# once (the hook runs on every start; a non-empty queue is left alone).
set -euo pipefail
url="$(awslocal sqs create-queue --queue-name login-queue --query QueueUrl --output text)"
waiting="$(awslocal sqs get-queue-attributes --queue-url "$url" \
    --attribute-names ApproximateNumberOfMessages --query Attributes.ApproximateNumberOfMessages --output text)"
if [ "$waiting" = "0" ] && [ ! -f /tmp/maskpipe-seeded ]; then
    while IFS= read -r body; do
        [ -n "$body" ] && awslocal sqs send-message --queue-url "$url" --message-body "$body" >/dev/null
    done < /seed/queue_bodies.jsonl
    touch /tmp/maskpipe-seeded
fi
echo "login-queue ready"
