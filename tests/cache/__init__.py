"""Tests of fmredis.ContextCache on real redis-servers."""
