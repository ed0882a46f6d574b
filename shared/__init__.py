"""The one library every service shares: settings, stream names, message models, the consumer loop."""
