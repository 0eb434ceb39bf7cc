terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.100.0, < 6.0.0"
    }
  }

  # Use a remote backend with encryption and locking for real environments,
  # for example (state holds ARNs and bucket names, not PHI or secrets):
  #
  # backend "s3" {
  #   bucket       = "<state-bucket>"
  #   key          = "phiserve/example.tfstate"
  #   region       = "<region>"
  #   encrypt      = true
  #   use_lockfile = true
  # }
}
