//! AWS EC2 through aws-sdk-ec2.
