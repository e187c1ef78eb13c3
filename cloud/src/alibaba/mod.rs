//! Alibaba Cloud ECS over its RPC API with POP (HMAC-SHA1) signatures.
