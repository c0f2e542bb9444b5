# Canaries: if either the key or a minted secret ever shows up in a response, a log line or an
# audit row, a secret has leaked. The test emulator accepts only this key, so any other key gets
# a real upstream 401.
CANARY_KEY = "sk-canary-6f1d0c3b9a8e47d2b5c4a39e1f7d2c60"
WORKFLOW_ID = "wf_test6c2f0a9b81d34e57"
OTHER_WORKFLOW_ID = "wf_other91e4b7c2a05d3f68"
