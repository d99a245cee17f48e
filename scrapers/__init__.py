"""Getting news in: feeds, polite HTTP, page fetching, article extraction and de-duplication."""
