"""dpo-pipeline's library: the SFT-to-DPO lifecycle, one folder per stage (data, feedback, train, evaluate), with the
shared pieces in common/, inference/ and judges/. It imports neither Prefect nor MLflow."""
