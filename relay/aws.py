"""AWS defaults shared by every part that builds a boto3/botocore client (SES, SQS, DynamoDB, sync)."""

from __future__ import annotations

# When neither the config, AWS_REGION/AWS_DEFAULT_REGION nor the profile names a region.
DEFAULT_REGION = "us-east-1"
