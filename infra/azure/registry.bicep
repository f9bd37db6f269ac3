// The container registry shared by staging and production: CI builds each image once, staging runs
// it, production promotes the same tag. Deploy once, in its own resource group:
//   az deployment group create -g <registry group> -f infra/azure/registry.bicep -p name=<registry name>

param name string
param location string = resourceGroup().location
@allowed(['Basic', 'Standard', 'Premium'])
param sku string = 'Standard'

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: name
  location: location
  sku: {
    name: sku
  }
  properties: {
    // pushes use the CI's Entra identity, pulls the apps' managed identity (AcrPull)
    adminUserEnabled: false
    anonymousPullEnabled: false
  }
}

output loginServer string = registry.properties.loginServer
