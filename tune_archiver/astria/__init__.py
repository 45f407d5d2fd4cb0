"""The Astria API: tunes and prompts, paged, with retries; the key goes to no other origin."""
