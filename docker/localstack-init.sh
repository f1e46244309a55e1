#!/bin/bash
# LocalStack ready hook: create the demo KMS key (alias/maskpipe-demo, for
# `maskpipe keygen --kms-key-id`) if missing, then create login-queue and
# load the 100 sample messages, once (the hook runs on every start; an
# existing alias and a non-empty queue are left alone). The key comes first:
# the healthcheck waits for the queue only.
set -euo pipefail
if ! awslocal kms describe-key --key-id alias/maskpipe-demo >/dev/null 2>&1; then
    key="$(awslocal kms create-key --description "maskpipe demo key (LocalStack)" \
        --query KeyMetadata.KeyId --output text)"
    awslocal kms create-alias --alias-name alias/maskpipe-demo --target-key-id "$key"
fi
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
