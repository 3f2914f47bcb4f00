"""steerlib: contrastive activation addition (CAA) to detoxify chat language models."""
