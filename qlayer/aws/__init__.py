"""The AWS substrate: adapters (S3, DynamoDB, SQS, Step Functions) and the handler bodies.

Importing this package imports nothing heavy: each handler module imports what it uses.
"""
